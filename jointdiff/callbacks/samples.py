"""Sample grids during training, saved as PNG and logged to the logger."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
import torchvision

from jointdiff.callbacks.logging import log_image, run_dir


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> Path:
    """images: (N, c, H, W) floats in [-1, 1] → PNG grid (values clamped like the reference's uint8 mapping)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, int(math.sqrt(len(images))))
    torchvision.utils.save_image(((images.float() + 1) / 2).clamp(0, 1), path, nrow=nrow, padding=2, pad_value=1.0)
    return path


class SampleGrid(L.Callback):
    """Every ``every_n_epochs`` epochs and at the end of fitting, draws ``num_samples`` unconditional samples from
    the model's EMA weights (fixed seed, so grids are comparable over training) and writes
    ``<run dir>/samples/step_XXXXXXX.png``.

    ``clip_denoised``: clamp x̂0 to [-1, 1] at every step (guided-diffusion's option). Off by default, as the
    reference samples; an early model (hundreds of steps) then tends to diverge to saturated black/white tiles
    that say little about what it has learned (``docs/results.md``), which is why the quick configs switch it on.

    The model must provide ``sample(num, generator, use_ema, progress, clip_denoised)``.
    """

    def __init__(
        self, every_n_epochs: int = 1, num_samples: int = 64, seed: int = 0, use_ema: bool = True,
        clip_denoised: bool = False,
    ):
        if every_n_epochs < 1 or num_samples < 1:
            raise ValueError("every_n_epochs and num_samples must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.seed = seed
        self.use_ema = use_ema
        self.clip_denoised = clip_denoised
        self.last_step: int | None = None
        self.last_path: Path | None = None

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last_step == trainer.global_step:
            return
        # trainer.log_dir broadcasts under DDP: every rank must ask for it, and every rank must record the step so
        # that all of them skip (or none of them skips) the next call
        directory = run_dir(trainer)
        self.last_step = trainer.global_step
        if trainer.is_global_zero:
            self._sample_and_save(trainer, pl_module, directory)

    def _sample_and_save(self, trainer: L.Trainer, pl_module: L.LightningModule, directory: Path) -> None:
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        images = pl_module.sample(self.num_samples, generator=gen, use_ema=self.use_ema, progress=True,
                                  clip_denoised=self.clip_denoised)
        path = save_grid(images, directory / "samples" / f"step_{trainer.global_step:07d}.png")
        log_image(trainer, "samples/unconditional", path, step=trainer.global_step)
        self.last_path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._write(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)
