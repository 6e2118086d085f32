"""Where a run writes its files, images to the logger, and the metrics JSON with its run summary."""

from __future__ import annotations

import json
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
    with the test accuracy and the paths of the checkpoint, this JSON and the last sample grid."""

    def __init__(self, filename: str = "metrics.json"):
        self.filename = filename

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
        grids = [cb.last_path for cb in trainer.callbacks if getattr(cb, "last_path", None)]
        if grids:
            data["sample_grid"] = str(grids[-1])
        atomic_write_json(data, path)
        return data

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "fit", self._path(trainer))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._path(trainer)
        data = self._write(trainer, "test", path)
        if data is None:
            return
        test = data["test"]
        lines = ["", "=" * 72, "jointdiff test summary"]
        for key in sorted(k for k in test if k.startswith("test/")):
            lines.append(f"  {key:<24} {test[key]:.4f}")
        lines.append(f"  checkpoint     {data.get('checkpoint', '(none saved)')}")
        lines.append(f"  metrics JSON   {path}")
        lines.append(f"  sample grid    {data.get('sample_grid', '(none)')}")
        lines.append("=" * 72)
        print("\n".join(lines), flush=True)
