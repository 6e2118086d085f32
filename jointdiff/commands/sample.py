"""``jointdiff sample``: draw samples from a trained checkpoint with any of the project's samplers.

    jointdiff sample --checkpoint runs/.../last.ckpt --sampler joint --alpha 200 --num 64 --classes [0,3]
    jointdiff sample --checkpoint ddpm.ckpt --sampler guidance --classifier noisy_clf.ckpt --scale 2
    jointdiff sample --checkpoint ddpm.ckpt --sampler ddim --steps 50 --num 256

Samplers: ``ddpm`` (ancestral, all T steps, unconditional), ``ddim`` (``--steps`` respaced steps, ``--eta``),
``joint`` (the joint model's conditional sampler, docs/design.md §5.1, needs a head: α, direction) and ``guidance``
(Dhariwal & Nichol with an external noise-aware classifier, docs/design.md §5.3: scale s). Writes into ``--output``:
``class_<k>.png`` grids (one per requested class or attribute vector; ``samples.png`` when unconditional),
``samples.npz`` (``arr_0`` uint8 (N, H, W, c) as guided-diffusion's scripts write, ``arr_1`` the requested
targets) and ``sample.json`` (arguments, paths, class hit rates).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from jointdiff.diffusion.conditional import RespacedAlpha
from jointdiff.diffusion.ddim import RESPACED_ETA
from jointdiff.files import atomic_write_json
from jointdiff.images import save_grid
from jointdiff.sampling.files import write_samples
from jointdiff.sampling.generate import (
    Sampler,
    auto_batch_size,
    check_sampler_args,
    guidance_classifier,
    requested_targets,
    sharded_generate,
)
from jointdiff.sampling.loading import Weights, judge_logits_fn, load_on_processes, pick_network
from jointdiff.tasks import hits


def write_group(out: Path, k: int, xs: torch.Tensor, target: torch.Tensor | None, model, weights: Weights,
                judge_fn: Callable[[torch.Tensor], torch.Tensor] | None) -> dict:
    """The grid of group ``k``'s samples ``xs`` and, for a conditional group, the hit rates of the model's own head
    and of the judge; returns the group's entry of ``sample.json``."""
    task, device = model.hparams.task, model.device
    if target is None:
        name = "samples"
    else:
        name = f"class_{int(target)}" if task == "multiclass" else f"attributes_{k}"
    grid = save_grid(xs, out / f"{name}.png")
    entry = {"name": name, "grid": str(grid), "num": len(xs)}
    if target is not None:
        xs_dev = xs.to(device)  # the gathered samples are on the CPU; the networks on `device`
        y = target.expand(len(xs), *target.shape).to(device)
        entry["target"] = target.tolist()
        if model.has_head:
            t0 = torch.zeros(len(xs), dtype=torch.long, device=device)
            with torch.no_grad():
                head = pick_network(model, weights).classify(xs_dev, t0)
            entry["own_head_hit_rate"] = float(hits(head, y, task).float().mean())
        if judge_fn is not None:
            entry["judge_hit_rate"] = float(hits(judge_fn(xs_dev), y, task).float().mean())
    print(f"{name}: {grid}" + "".join(f"  {k}={v:.3f}" for k, v in entry.items() if k.endswith("hit_rate")))
    return entry


def sample(
    checkpoint: str,
    output: str = "samples",
    sampler: Sampler = "joint",
    num: int = 64,
    classes: list[int] | None = None,
    attributes: list[str] | None = None,
    alpha: float | list[float] = 200.0,
    direction: int = 1,
    scale: float = 1.0,
    classifier: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    respaced_alpha: RespacedAlpha = "same",
    seed: int = 0,
    batch_size: int | Literal["auto"] = 64,
    weights: Weights = "model",
    clip_denoised: bool | None = None,
    judge: str | None = None,
    device: str = "cpu",
    devices: int = 1,
    num_nodes: int = 1,
    progress: bool = True,
) -> dict | None:
    """Sample from a JointDiffusion checkpoint (a joint model, or a vanilla DDPM with classifier_weight 0).

    On every GPU of a machine: ``--device cuda --devices 4``; of a SLURM job: ``experiments/slurm/sample.sbatch``
    (``--devices``/``--num_nodes`` from the allocation). The file is the same for any number of processes.

    Args:
        checkpoint: the model's ``.ckpt`` (from ``jointdiff fit``).
        output: folder for the PNG grids, ``samples.npz`` and ``sample.json``.
        sampler: ddpm | ddim (unconditional) | joint | guidance (conditional).
        num: samples per requested class or attribute vector (the total for unconditional samplers).
        classes: class ids to sample (multi-class; conditional samplers; default every class).
        attributes: 0/1 vectors ("1,0,1,…") or text files with one vector per line (multi-label models).
        alpha: step size α of the joint sampler: one value, or one per diffusion step (index = step).
        direction: +1 (reference: ascent on the target-class CE, D11) or -1.
        scale: gradient scale s of classifier guidance.
        classifier: noise-aware classifier checkpoint for ``guidance``.
        steps: respaced steps for ``ddim`` and ``joint`` (default all T; ``joint`` then runs η-DDIM on them).
        eta: DDIM η on a respaced grid (0 = deterministic); default the validated
            :data:`~jointdiff.diffusion.ddim.RESPACED_ETA` (docs/sampling.md).
        respaced_alpha: α per step of the respaced joint sampler: ``same`` (α per network evaluation, as on the
            full grid) or ``stride`` (α times the steps a respaced step covers); see docs/sampling.md.
        seed: sample k draws its noise from its own stream keyed by (seed, k): the same seed gives the same
            images for any batch size, class mix and number of processes.
        batch_size: samples per sampler call (batches are filled across classes); ``auto`` fills the device (the
            largest batch whose reverse step fits in GPU memory, found by doubling; 64 on CPU).
        weights: ema | raw | model (the checkpoint's ``eval_weights``).
        clip_denoised: clamp x̂0 to [-1, 1] at every step. Default: each sampler's reference behaviour (no clamping;
            clamped for guidance, as guided-diffusion's ``classifier_sample.py``).
        judge: an independent classifier checkpoint (e.g. StandaloneClassifier) to report the class hit rate.
        device: cpu, cuda, … (with ``devices > 1``: the accelerator, ``cpu`` or ``cuda``).
        devices: processes (GPUs) per node that share the samples; launched with Lightning Fabric (DDP). Under
            SLURM, ``srun`` starts them (``--ntasks-per-node`` = devices).
        num_nodes: nodes of the job.
        progress: show progress bars.
    """
    if num < 1 or (batch_size != "auto" and batch_size < 1):
        raise ValueError("--num and --batch_size must be >= 1 (or --batch_size auto)")
    if devices < 1 or num_nodes < 1:
        raise ValueError("--devices and --num_nodes must be >= 1")
    eta = RESPACED_ETA if eta is None else eta
    fabric, model = load_on_processes(checkpoint, device, devices, num_nodes)
    device = str(model.device)
    check_sampler_args(model, sampler, alpha=alpha, scale=scale, steps=steps, eta=eta, classifier=classifier)
    guide = guidance_classifier(model, classifier, device) if sampler == "guidance" else None
    groups, targets = requested_targets(model, sampler, num, classes, attributes)
    total = num * len(groups)

    began = time.perf_counter()
    if batch_size == "auto":
        batch_size = auto_batch_size(model, sampler, total, groups[0], guide, weights)
        print(f"--batch_size auto: {batch_size}")
    kwargs = dict(alpha=alpha, direction=direction, scale=scale, classifier=guide, steps=steps, eta=eta,
                  respaced_alpha=respaced_alpha, seed=seed, batch_size=batch_size, weights=weights,
                  progress=progress, clip_denoised=clip_denoised)
    x = sharded_generate(fabric, model, sampler, total, targets, **kwargs)
    if fabric is not None and not fabric.is_global_zero:
        return None

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    judge_fn = judge_logits_fn(judge, device) if judge else None
    record = {"groups": [write_group(out, k, x[k * num:(k + 1) * num], target, model, weights, judge_fn)
                         for k, target in enumerate(groups)]}
    npz = write_samples(out / "samples.npz", x, targets)
    record.update(
        checkpoint=str(checkpoint), sampler=sampler, num=num, seed=seed, seeding="per sample: (seed, index)",
        weights=weights, npz=str(npz), batch_size=batch_size, clip_denoised=clip_denoised,
        alpha=alpha if sampler == "joint" else None, direction=direction if sampler == "joint" else None,
        scale=scale if sampler == "guidance" else None, classifier=classifier, judge=judge,
        steps=steps if sampler in ("ddim", "joint") and steps else model.diffusion.num_steps,
        eta=eta if sampler == "ddim" or (sampler == "joint" and steps) else None,
        respaced_alpha=respaced_alpha if sampler == "joint" and steps else None,
        processes=1 if fabric is None else fabric.world_size, seconds=time.perf_counter() - began,
    )
    if judge_fn is not None and targets is not None:
        record["judge_hit_rate"] = float(np.mean([g["judge_hit_rate"] for g in record["groups"]]))
    atomic_write_json(record, out / "sample.json")
    print(f"wrote {npz} and {out / 'sample.json'}")
    return record


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    CLI(sample, args=argv, as_positional=False)
