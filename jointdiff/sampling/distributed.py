"""Generation on every device of a job: the samples' global indices are cut into one contiguous shard per process,
each process draws its shard (every sample seeded by its global index, so the images do not depend on the number of
processes) and the shards are gathered on every rank in index order.

Lightning Fabric does the launching: locally it starts the extra processes itself (DDP; gloo on CPU, NCCL on GPUs);
under SLURM ``srun`` starts one task per device and Fabric reads the ranks from the environment, as ``jointdiff fit``
does with the Trainer. Fabric rather than ``Trainer.predict``: the prediction loop's ``DistributedSampler`` pads the
last shard with repeated samples, and a sampler needs no data loader at all.
"""

from __future__ import annotations

import math

import torch


def launch(device: str, devices: int, num_nodes: int):
    """A launched :class:`lightning.fabric.Fabric` for ``devices × num_nodes`` processes, or None for one process."""
    if devices == 1 and num_nodes == 1:
        return None
    from lightning.fabric import Fabric

    accelerator = "cpu" if torch.device(device).type == "cpu" else "gpu"
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp")
    fabric.launch()
    return fabric


def shard(total: int, rank: int, world: int) -> range:
    """The contiguous block of ``range(total)`` that process ``rank`` of ``world`` draws (the last ones may be
    shorter or empty)."""
    per = math.ceil(total / world)
    return range(min(total, rank * per), min(total, (rank + 1) * per))
