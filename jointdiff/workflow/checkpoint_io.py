"""Checkpoints that survive a kill at any moment, and a SLURM resume that survives a broken HPC checkpoint.

Lightning saves through fsspec's local transaction: ``torch.save`` into ``tempfile.mkstemp()`` (the *system* temp
folder) and then ``shutil.move`` to the destination. With ``$TMPDIR`` on another filesystem (tmpfs on many clusters)
the move is a copy into the destination file, so a kill during it leaves a truncated ``last.ckpt`` (measured: 0
bytes) and an orphan in ``$TMPDIR``. :class:`AtomicCheckpointIO` writes beside the destination and renames
(:mod:`jointdiff.files`), for every checkpoint the trainer writes: ``last.ckpt``, step checkpoints and the
``hpc_ckpt_N.ckpt`` of a SLURM requeue. The ``jointdiff`` CLI installs it on every trainer whose strategy uses the
default I/O; in Python, pass ``Trainer(plugins=[AtomicCheckpointIO()])``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.utilities import rank_zero_warn

from jointdiff.files import atomic_write
from jointdiff.models.checkpoints import CorruptCheckpointError, read_checkpoint

HPC_PATTERN = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic whatever ``$TMPDIR`` is (module docstring).

    Args:
        keep_hpc: after writing ``hpc_ckpt_N.ckpt``, delete all but the newest ``keep_hpc`` HPC checkpoints of that
            folder (Lightning keeps every one; each is a full checkpoint). Two keep a fallback should the newest
            one be unreadable.
    """

    def __init__(self, keep_hpc: int = 2):
        super().__init__()
        if keep_hpc < 1:
            raise ValueError(f"keep_hpc must be >= 1, got {keep_hpc}")
        self.keep_hpc = keep_hpc

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        protocol = get_filesystem(path).protocol
        local = "file" in ({protocol} if isinstance(protocol, str) else set(protocol))
        if storage_options is not None or not local:
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: Lightning's own path
        atomic_write(path, lambda f: torch.save(checkpoint, f))
        if HPC_PATTERN.match(Path(path).name):
            prune_hpc_checkpoints(Path(path).parent, self.keep_hpc)


def install(trainer) -> bool:
    """Use :class:`AtomicCheckpointIO` for ``trainer`` unless its strategy was given another I/O plugin."""
    strategy = trainer.strategy
    current = getattr(strategy, "_checkpoint_io", None)
    if current is not None and type(current) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True


def hpc_checkpoints(folder: Path) -> list[Path]:
    """``hpc_ckpt_N.ckpt`` files of ``folder``, newest (largest N) first."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("hpc_ckpt_*.ckpt") if (m := HPC_PATTERN.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune_hpc_checkpoints(folder: Path, keep: int) -> list[Path]:
    removed = []
    for old in hpc_checkpoints(folder)[keep:]:
        old.unlink(missing_ok=True)
        removed.append(old)
    return removed


def set_aside_unreadable_hpc_checkpoints(folder: Path) -> list[Path]:
    """Rename every HPC checkpoint newer than the newest readable one to ``unreadable-hpc-ckpt-N.ckpt`` (with a
    warning), so that Lightning's SLURM auto-resume, which takes the largest N, resumes from the newest *readable*
    checkpoint instead of crashing. Only definite corruption (empty, truncated, not a zip, not a pickle torch reads:
    :class:`CorruptCheckpointError`) sets a file aside; an I/O error, a lack of memory or a refused file propagates,
    so that a transient fault fails the attempt (and SLURM requeues it) instead of discarding a good checkpoint.
    Safe when every rank calls it: a file another rank already moved is skipped."""
    moved = []
    for path in hpc_checkpoints(folder):
        try:
            read_checkpoint(path, mmap=True)
            break
        except FileNotFoundError:
            continue
        except CorruptCheckpointError as err:
            # (no "hpc_ckpt_" left in the name: Lightning would still count it as an HPC checkpoint)
            target = path.with_name("unreadable-" + path.name.replace("_", "-"))
            try:
                path.replace(target)
            except FileNotFoundError:
                continue
            rank_zero_warn(f"skipping an unreadable HPC checkpoint ({err}); it is kept as {target}")
            moved.append(target)
    return moved


def existing_checkpoints(run_folder: Path) -> list[Path]:
    """Checkpoints a fit in ``run_folder`` would overwrite: ``checkpoints/*.ckpt`` and ``hpc_ckpt_N.ckpt``."""
    run_folder = Path(run_folder)
    return sorted([*run_folder.glob("checkpoints/*.ckpt"), *hpc_checkpoints(run_folder)])


def refuse_restart_over_checkpoints(run_folder: Path, hpc_folder: Path, restart: bool) -> None:
    """Raise one line if a ``fit`` without ``--ckpt_path`` would start from step 0 in a run folder that holds
    checkpoints (and overwrite ``last.ckpt``), unless ``restart`` says to: a SLURM requeue whose HPC checkpoints were
    all unreadable must not quietly throw the run away. Lightning resumes from an HPC checkpoint of ``hpc_folder``
    by itself; that is not a restart."""
    if restart or hpc_checkpoints(hpc_folder):
        return
    found = existing_checkpoints(run_folder)
    if found:
        names = ", ".join(str(p) for p in found[:3]) + (" …" if len(found) > 3 else "")
        raise ValueError(
            f"the run folder {run_folder} already holds checkpoints ({names}) and this fit has no --ckpt_path, so it "
            "would start again from step 0 and overwrite them: resume with --ckpt_path <file>, use another run "
            "folder, or pass --restart true to start over"
        )
