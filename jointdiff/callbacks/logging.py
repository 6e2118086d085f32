"""Where a run writes its files, images to the logger, and the metrics JSON with its run summary."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from jointdiff.files import atomic_write_json


def run_dir(trainer: L.Trainer) -> Path:
    """The run's folder: the logger's versioned directory, else ``trainer.default_root_dir``."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def log_image(trainer: L.Trainer, key: str, path: Path, step: int | None = None) -> None:
    """Send a saved PNG to every logger that takes images (W&B, TensorBoard); others keep just the file."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            import torchvision.io

            logger.experiment.add_image(key, torchvision.io.read_image(str(path)), global_step=step)


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


class MetricsJSON(L.Callback):
    """Writes ``<run dir>/metrics.json`` after fitting and after testing (merging stages), and prints a summary
    with the test metrics, the wall time of the run (fit and test) and every file in the run folder.

    Sample-grid callbacks are found by their ``grid_key`` attribute (``sample_grid``, ``conditional_grid``): the
    path of each one's last grid is stored under that key, the sampler that drew it under ``<key>_sampler``.

    The wall time is split into ``seconds``: ``validation`` and ``test`` (their loops), ``grids`` (the grid
    callbacks' drawing), ``training`` (the rest of ``fit``: steps, data loading, checkpoints) with its steps/s, and
    ``total``."""

    def __init__(self, filename: str = "metrics.json"):
        self.filename = filename
        self._started: float | None = None
        self._fit_started: float | None = None
        self.seconds: dict[str, float] = {"validation": 0.0, "test": 0.0, "fit": 0.0}
        self._phase_started: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._started is None:  # `fit` then `test` in one process: the wall time covers both
            self._started = time.monotonic()
        if stage == "fit":
            self._fit_started = time.monotonic()

    def _begin(self) -> None:
        self._phase_started = time.monotonic()

    def _end(self, phase: str) -> None:
        if self._phase_started is not None:
            self.seconds[phase] += time.monotonic() - self._phase_started
            self._phase_started = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end("validation")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin()

    def time_split(self, trainer: L.Trainer) -> dict[str, float]:
        """Seconds per part of the run so far, and the training steps per second."""
        grids = sum(getattr(cb, "seconds", 0.0) for cb in trainer.callbacks if getattr(cb, "grid_key", None))
        training = max(0.0, self.seconds["fit"] - self.seconds["validation"] - grids)
        split = {"training": training, "validation": self.seconds["validation"], "grids": grids,
                 "test": self.seconds["test"]}
        if self._started is not None:
            split["total"] = time.monotonic() - self._started
        split = {k: round(v, 3) for k, v in split.items()}
        steps = trainer.global_step if not trainer.ckpt_path else 0
        if training > 0 and steps:
            split["training_steps_per_s"] = round(steps / training, 3)
        return split

    def _path(self, trainer: L.Trainer) -> Path:
        return run_dir(trainer) / self.filename

    def _write(self, trainer: L.Trainer, stage: str, path: Path) -> dict | None:
        """Merge this stage's metrics into ``path`` on rank zero. ``path`` is resolved by the caller on every rank:
        ``trainer.log_dir`` broadcasts under DDP, so asking for it on rank zero alone would hang."""
        if not trainer.is_global_zero:
            return None
        data = json.loads(path.read_text()) if path.exists() else {}
        metrics = trainer.callback_metrics.items()
        data[stage] = {k: _plain(v) for k, v in metrics if k.startswith(("train/", "val/", "test/"))}
        data[stage]["global_step"] = trainer.global_step
        data[stage]["epoch"] = trainer.current_epoch
        if stage != "fit" and trainer.ckpt_path:
            # `test --ckpt_path X`: the weights evaluated are X's, trained to X's step (the trainer's own step is 0)
            data[stage]["checkpoint"] = data["checkpoint"] = str(trainer.ckpt_path)
            data[stage]["global_step"] = getattr(trainer.lightning_module, "loaded_global_step", None)
            data[stage].pop("epoch")
        else:
            ckpt = trainer.checkpoint_callback
            if ckpt is not None and (ckpt.last_model_path or ckpt.best_model_path):
                data["checkpoint"] = ckpt.last_model_path or ckpt.best_model_path
        for cb in trainer.callbacks:
            if getattr(cb, "grid_key", None) and getattr(cb, "last_path", None):
                data[cb.grid_key] = str(cb.last_path)
                data[f"{cb.grid_key}_clip_denoised"] = bool(getattr(cb, "clip_denoised", False))
                data[f"{cb.grid_key}_sampler"] = getattr(cb, "sampler", None)
        if self._started is not None:
            data[stage]["wall_time_s"] = round(time.monotonic() - self._started, 1)
            data[stage]["seconds"] = self.time_split(trainer)
        atomic_write_json(data, path)
        return data

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fit_started is not None:
            self.seconds["fit"] += time.monotonic() - self._fit_started
            self._fit_started = None
        self._write(trainer, "fit", self._path(trainer))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end("test")
        path = self._path(trainer)
        data = self._write(trainer, "test", path)
        if data is None:
            return
        test = data["test"]
        lines = ["", "=" * 72, "jointdiff test summary"]
        for key in sorted(k for k in test if k.startswith("test/")):
            value = test[key]
            lines.append(f"  {key:<24} " + (f"{value:.4f}" if isinstance(value, (int, float)) else "non-finite"))
        if "wall_time_s" in test:
            lines.append(f"  {'wall time (s)':<24} {test['wall_time_s']:.0f}")
            split = test.get("seconds", {})
            if split.get("training"):
                rate = split.get("training_steps_per_s")
                lines.append(f"    training {split['training']:.0f} s" + (f" ({rate:.2f} steps/s)" if rate else "")
                             + f", validation {split['validation']:.0f} s, grids {split['grids']:.0f} s, "
                             f"test {split['test']:.0f} s")
        lines.append(f"  checkpoint     {data.get('checkpoint', '(none saved)')}")
        lines.append(f"  metrics JSON   {path}")
        for key, label in (("sample_grid", "sample grid"), ("conditional_grid", "class grid")):
            if key in data or key == "sample_grid":
                clamped = "; x̂0 clamped to [-1, 1]" if data.get(f"{key}_clip_denoised") else ""
                sampler = data.get(f"{key}_sampler")
                how = f"  ({sampler}{clamped})" if sampler else (f"  ({clamped[2:]})" if clamped else "")
                lines.append(f"  {label:<14} {data.get(key, '(none)')}{how}")
        lines.append(f"  files in {path.parent}:")
        lines += [f"    {f.relative_to(path.parent)}" for f in sorted(path.parent.rglob("*")) if f.is_file()]
        lines.append("=" * 72)
        print("\n".join(lines), flush=True)
