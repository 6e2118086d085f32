"""Callbacks of the research workflow: the resolved config on W&B, and a record of a run's attempts.

``WandbResolvedConfig`` pushes the *full resolved* LightningCLI config (every default filled in, exactly what
``--print_config`` shows and ``config.yaml`` holds) to each W&B logger: as the run's config, so runs can be filtered
and compared on any key in the W&B UI, and as the file ``config.yaml``, so a W&B run can be re-launched exactly.
Lightning on its own sends only the model's hyperparameters. (LightningCLI's documented alternative is a
``SaveConfigCallback`` subclass passed to the CLI; a callback in the config needs no change to the CLI.)

``RunRecord`` appends one entry per attempt to ``<run dir>/run.json``: when and where it started, from which
checkpoint and at which step it resumed, the SLURM job and restart count, the W&B run, and how it ended. A requeued
SLURM job therefore documents its own history, and ``jointdiff report`` can show it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from jointdiff.callbacks.logging import run_dir
from jointdiff.files import atomic_write, atomic_write_json
from jointdiff.runs import RUN_RECORD, slurm_run_key


def resolved_config(trainer: L.Trainer) -> tuple[dict, str] | None:
    """(config as a dict, as YAML text) of the LightningCLI run that built ``trainer``; ``None`` outside the CLI."""
    saver = next((cb for cb in trainer.callbacks if isinstance(cb, SaveConfigCallback)), None)
    if saver is None:
        return None
    text = saver.parser.dump(saver.config, skip_none=False)
    return yaml.safe_load(text), text


class WandbResolvedConfig(L.Callback):
    """Sends the resolved CLI config to every ``WandbLogger`` of the trainer (module docstring).

    Args:
        filename: name of the YAML file written into the run folder and uploaded to the W&B run.
    """

    def __init__(self, filename: str = "config_resolved.yaml"):
        self.filename = filename

    @rank_zero_only
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            rank_zero_warn("WandbResolvedConfig: the trainer has no WandbLogger; nothing is sent")
            return
        found = resolved_config(trainer)
        if found is None:
            rank_zero_warn("WandbResolvedConfig: not run from the jointdiff CLI; only the model's hyperparameters "
                           "reach W&B")
            return
        config, text = found
        folder = run_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.filename
        atomic_write(path, lambda f: f.write(text), mode="w")
        for logger in loggers:
            run = logger.experiment
            run.config.update(config, allow_val_change=True)
            run.save(str(path), base_path=str(folder), policy="now")
            if not getattr(logger, "named_by_user", True):
                run.name = str(folder)  # the local folder, e.g. runs/paper/cifar10/joint/version_0


def _slurm_info() -> dict | None:
    key = slurm_run_key()
    if key is None:
        return None
    return {
        "run_key": key,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
        "nodes": os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST"),
        "ntasks": os.environ.get("SLURM_NTASKS"),
    }


class RunRecord(L.Callback):
    """Appends this attempt to ``<run dir>/run.json`` (module docstring). Rank 0 writes; nothing is logged."""

    def __init__(self, filename: str = RUN_RECORD):
        self.filename = filename
        self._attempt: dict | None = None

    def _path(self, trainer: L.Trainer) -> Path:
        return run_dir(trainer) / self.filename

    def _load(self, trainer: L.Trainer) -> dict:
        path = self._path(trainer)
        return json.loads(path.read_text()) if path.exists() else {"attempts": []}

    def _save(self, trainer: L.Trainer, data: dict) -> None:
        atomic_write_json(data, self._path(trainer))

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = self._load(trainer)
        wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb:
            data["wandb"] = {"id": wandb[0].version, "project": wandb[0].name}
        data["run_dir"] = str(run_dir(trainer))
        self._attempt = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "host": socket.gethostname(),
            "start_step": trainer.global_step,
            "resumed_from": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "world_size": trainer.world_size,
            "slurm": _slurm_info(),
            "pid": os.getpid(),
            "status": "running",
        }
        data["attempts"].append(self._attempt)
        self._save(trainer, data)

    def _finish(self, trainer: L.Trainer, status: str, reason: str | None = None) -> None:
        if self._attempt is None:
            return
        data = self._load(trainer)
        if data["attempts"]:
            data["attempts"][-1].update(status=status, end_step=trainer.global_step,
                                        ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
            if reason:
                data["attempts"][-1]["reason"] = reason
            self._save(trainer, data)
        self._attempt = None

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, "finished")

    @rank_zero_only
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A signal (SIGTERM, Ctrl-C) records ``interrupted``, any other exception ``failed``; a SIGKILLed attempt
        cannot record anything and stays ``running``, which :func:`attempt_status` reads as ``stale``."""
        signalled = isinstance(exception, (SIGTERMException, KeyboardInterrupt))
        reason = f"{type(exception).__name__}: {exception}"[:300]
        self._finish(trainer, "interrupted" if signalled else "failed", reason)
