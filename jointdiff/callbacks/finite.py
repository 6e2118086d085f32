"""Training stops at the first non-finite loss, and no checkpoint is ever written from non-finite weights.

A diverged run (a too-large learning rate, a bad batch) otherwise trains on NaN to the end, writes a checkpoint of
NaN weights and reports its test accuracy as a result. :class:`StopOnNonFinite` keeps each step's loss and logged
loss terms *on the device* (no host sync per step) and reads whether any was non-finite (one sync) every
``check_every_n_steps`` steps, before every checkpoint is written, and at the end of fitting; a bad value raises
:class:`NonFiniteLossError`, one line naming the step and the loss terms. The
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
        # the steps since the last read: (global step, host int; loss terms, device tensors): nothing is copied
        # between host and device per step, which on a GPU would be a sync
        self._window: list[tuple[int, dict[str, torch.Tensor]]] = []

    def _every(self, pl_module: L.LightningModule) -> int:
        if self.check_every_n_steps is not None:
            return self.check_every_n_steps
        return 1 if pl_module.device.type == "cpu" else 100

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        terms = {"loss": loss.detach().clone()}
        terms.update({k: v.detach().clone() for k, v in trainer.callback_metrics.items()
                      if k.startswith("train/") and "loss" in k and isinstance(v, torch.Tensor) and v.numel() == 1
                      and v.device == loss.device})
        self._window.append((trainer.global_step, terms))
        if trainer.global_step % self._every(pl_module) == 0:
            self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """Raise :class:`NonFiniteLossError` if a step since the last check had a non-finite loss (one host sync)."""
        if not self._window:
            return
        flags = torch.stack([~torch.isfinite(terms["loss"]).all() for _, terms in self._window])
        bad = flags.any().long()
        if trainer.world_size > 1:  # every rank stops together
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        if int(bad) == 0:
            self._window.clear()
            return
        shown, step = "on another rank", "?"
        if bool(flags.any()):
            step, terms = self._window[int(flags.long().argmax())]
            shown = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        raise NonFiniteLossError(
            f"training diverged: non-finite loss at step {step} ({shown}); stopped at step "
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
