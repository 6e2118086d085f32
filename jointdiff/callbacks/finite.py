"""Training stops at the first non-finite loss, and no checkpoint is ever written from non-finite weights.

A diverged run (a too-large learning rate, a bad batch) otherwise trains on NaN to the end, writes a checkpoint of
NaN weights and reports its test accuracy as a result. :class:`StopOnNonFinite` keeps a flag *on the device*: each
step adds ``~isfinite(loss)`` to it and remembers the first bad step and its logged loss terms, with no host sync.
The flag is read (one sync) every ``check_every_n_steps`` steps, before every checkpoint is written, and at the
end of fitting; a set flag raises :class:`NonFiniteLossError`, one line naming the step and the loss terms. The
``jointdiff`` CLI adds this callback to every ``fit``; in Python pass ``Trainer(callbacks=[StopOnNonFinite()])``.
"""

from __future__ import annotations

import lightning as L
import torch

from jointdiff.models.checkpoints import NonFiniteLossError, check_finite_state


class StopOnNonFinite(L.Callback):
    """Stops training at the first non-finite loss (module docstring).

    Args:
        check_every_n_steps: how often the device flag is read; ``None``: every step on CPU (free there), every 100
            steps on an accelerator (a read is a host sync). Checkpoints and the end of fitting always check.
    """

    def __init__(self, check_every_n_steps: int | None = None):
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._bad: torch.Tensor | None = None  # number of non-finite losses so far (device)
        self._first: dict[str, torch.Tensor] = {}  # step and loss terms of the first one (device)

    def _every(self, pl_module: L.LightningModule) -> int:
        if self.check_every_n_steps is not None:
            return self.check_every_n_steps
        return 1 if pl_module.device.type == "cpu" else 100

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = ~torch.isfinite(loss.detach()).all()
        if self._bad is None:
            self._bad = torch.zeros((), dtype=torch.long, device=loss.device)
        is_first = bad & (self._bad == 0)
        terms = {"step": torch.tensor(trainer.global_step, device=loss.device), "loss": loss.detach().float()}
        terms.update({k: v.detach().float().to(loss.device) for k, v in trainer.callback_metrics.items()
                      if k.startswith("train/") and "loss" in k and isinstance(v, torch.Tensor) and v.numel() == 1})
        for key, value in terms.items():
            old = self._first.get(key, torch.zeros_like(value))
            self._first[key] = torch.where(is_first, value, old)
        self._bad = self._bad + bad.long()
        if trainer.global_step % self._every(pl_module) == 0:
            self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """Raise :class:`NonFiniteLossError` if any step so far had a non-finite loss (one host sync)."""
        if self._bad is None:
            return
        bad = self._bad
        if trainer.world_size > 1:  # every rank stops together
            bad = trainer.strategy.reduce(bad.clone(), reduce_op="sum")
        if int(bad) == 0:
            return
        first = {k: float(v) for k, v in self._first.items()}
        step = int(first.pop("step", -1))
        shown = ", ".join(f"{k}={v:.4g}" for k, v in first.items())
        raise NonFiniteLossError(
            f"training diverged: non-finite loss at step {step} ({shown or 'on another rank'}); stopped at step "
            f"{trainer.global_step}, no checkpoint written from non-finite weights: lower the learning rate or "
            "resume from the last good checkpoint"
        )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # called while the checkpoint is assembled, before anything is written: raising here writes nothing
        self.check(trainer)
        problem = None
        try:
            check_finite_state(checkpoint.get("state_dict", {}), f"the model at step {trainer.global_step}")
        except NonFiniteLossError as err:  # the last update made the weights non-finite before any loss showed it
            problem = str(err)
        if problem is not None:  # (raised outside the handler: the one-line error shows this message, not the inner)
            raise NonFiniteLossError(f"training diverged: {problem}; no checkpoint written from it, the last good "
                                     "one is kept")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)
