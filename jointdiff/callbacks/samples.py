"""Sample grids during training (unconditional, and class-conditional with the joint sampler), saved as PNG and
logged to the logger."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from jointdiff.callbacks.logging import log_image, run_dir
from jointdiff.diffusion.ddim import RESPACED_ETA
from jointdiff.images import save_grid


class SampleGrid(L.Callback):
    """Every ``every_n_epochs`` epochs and at the end of fitting, draws ``num_samples`` unconditional samples from
    the model's EMA weights (fixed seed, so grids are comparable over training) and writes
    ``<run dir>/samples/step_XXXXXXX.png``.

    ``clip_denoised``: clamp x̂0 to [-1, 1] at every step (guided-diffusion's option). Off by default, as the
    reference samples; an early model (hundreds of steps) then tends to diverge to saturated black/white tiles
    that say little about what it has learned (``docs/results.md``), which is why the CPU demo switches it on.
    ``steps``: draw with η-DDIM on that many respaced steps (``eta``; default
    :data:`~jointdiff.diffusion.ddim.RESPACED_ETA`) instead of all T ancestral steps.

    The model must provide ``sample(num, generator, use_ema, progress, clip_denoised, steps, eta)``. ``seconds``
    accumulates the time spent drawing; ``sampler`` says what drew the grid (both read by :class:`MetricsJSON`).
    """

    grid_key = "sample_grid"  # where MetricsJSON records the last grid's path

    def __init__(
        self, every_n_epochs: int = 1, num_samples: int = 64, seed: int = 0, use_ema: bool = True,
        clip_denoised: bool = False, steps: int | None = None, eta: float | None = None,
    ):
        if every_n_epochs < 1 or num_samples < 1:
            raise ValueError("every_n_epochs and num_samples must be >= 1")
        if steps is not None and steps < 1 or eta is not None and eta < 0:
            raise ValueError(f"steps must be >= 1 and eta >= 0, got {steps}, {eta}")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.seed = seed
        self.use_ema = use_ema
        self.clip_denoised = clip_denoised
        self.steps = steps
        self.eta = RESPACED_ETA if eta is None else eta
        self.last_step: int | None = None
        self.last_path: Path | None = None
        self.seconds = 0.0
        self.sampler: str | None = None

    def describe(self, pl_module: L.LightningModule) -> str:
        """The sampler of this grid, in words, for the run summary."""
        T = pl_module.diffusion.num_steps
        if self.steps is None or self.steps == T:
            return f"ancestral, all {T} steps"
        return f"η-DDIM on {self.steps} of {T} steps, η = {self.eta:g}"

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last_step == trainer.global_step:
            return
        # trainer.log_dir broadcasts under DDP: every rank must ask for it, and every rank must record the step so
        # that all of them skip (or none of them skips) the next call
        directory = run_dir(trainer)
        self.last_step = trainer.global_step
        if trainer.is_global_zero:
            began = time.perf_counter()
            self._sample_and_save(trainer, pl_module, directory)
            self.seconds += time.perf_counter() - began
            self.sampler = self.describe(pl_module)

    def _sample_and_save(self, trainer: L.Trainer, pl_module: L.LightningModule, directory: Path) -> None:
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        images = pl_module.sample(self.num_samples, generator=gen, use_ema=self.use_ema, progress=True,
                                  clip_denoised=self.clip_denoised, steps=self.steps, eta=self.eta)
        path = save_grid(images, directory / "samples" / f"step_{trainer.global_step:07d}.png")
        log_image(trainer, "samples/unconditional", path, step=trainer.global_step)
        self.last_path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._write(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)


class ClassConditionalGrid(SampleGrid):
    """A class-conditional grid drawn with the joint model's own sampler (Algorithm 1, :mod:`jointdiff.diffusion.
    conditional`): one row per class, ``per_class`` samples each, written to
    ``<run dir>/samples/conditional_step_XXXXXXX.png`` at the same moments as :class:`SampleGrid`.

    The steering signal is the model's head on noisy inputs, so the grid is only meaningful for a model trained with
    a noisy classifier (``noisy_classifier=replace|add``); a model without one gets a warning, not an error.
    ``alpha``/``direction``: the sampler's step size and D11 direction. Multi-class models only.
    The model must provide ``conditional_sample(targets, alpha, direction, generator, use_ema, progress,
    clip_denoised)``.
    """

    grid_key = "conditional_grid"

    def __init__(
        self, per_class: int = 6, alpha: float = 200.0, direction: int = 1, every_n_epochs: int = 1, seed: int = 0,
        use_ema: bool = True, clip_denoised: bool = False, steps: int | None = None, eta: float | None = None,
    ):
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        if not alpha >= 0 or direction not in (1, -1):
            raise ValueError(f"alpha must be >= 0 and direction +1 or -1, got {alpha}, {direction}")
        super().__init__(every_n_epochs, per_class, seed, use_ema, clip_denoised, steps, eta)
        self.per_class = per_class
        self.alpha = alpha
        self.direction = direction

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        hp = pl_module.hparams
        if hp.get("task", "multiclass") != "multiclass" or not getattr(pl_module, "has_head", False):
            raise ValueError("ClassConditionalGrid needs a multi-class model with a classifier head "
                             f"(got {type(pl_module).__name__}, task={hp.get('task')!r}); remove the callback")
        if hp.get("noisy_classifier", "off") == "off":
            rank_zero_warn("ClassConditionalGrid: the model's head never saw noisy inputs (noisy_classifier=off), "
                           "so it steers the sampler with features it was not trained on")

    def _sample_and_save(self, trainer: L.Trainer, pl_module: L.LightningModule, directory: Path) -> None:
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        num_classes = pl_module.hparams.num_classes
        targets = torch.arange(num_classes, device=pl_module.device).repeat_interleave(self.per_class)  # row k: class k
        images = pl_module.conditional_sample(
            targets, self.alpha, direction=self.direction, generator=gen, use_ema=self.use_ema, progress=True,
            clip_denoised=self.clip_denoised, steps=self.steps, eta=self.eta,
        )
        path = save_grid(images, directory / "samples" / f"conditional_step_{trainer.global_step:07d}.png",
                         nrow=self.per_class)
        log_image(trainer, "samples/class_conditional", path, step=trainer.global_step)
        self.last_path = path

    def describe(self, pl_module: L.LightningModule) -> str:
        return f"joint sampler (α = {self.alpha:g}), " + super().describe(pl_module)
