"""Exponential moving average of a module's weights.

Written here rather than taken from ``torch.optim.swa_utils.AveragedModel`` because that class tests a device
tensor (``n_averaged > 0``) on every update, a host-device sync per training step; this one takes the step
count as a Python int and updates with ``torch._foreach`` ops only.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Holds ``module``, an eval-mode copy of the tracked network, updated with ``θ_ema ← d·θ_ema + (1−d)·θ``.

    The decay warms up as ``d_k = min(decay, (1+k)/(10+k))`` at the ``k``-th update (k = 1, 2, …) so that short
    runs still get a useful average (the reference keeps a fixed 0.9999 EMA that it never uses, D6). Floating-point
    buffers (BatchNorm running statistics) are copied, not averaged.

    The EMA counts its own updates (``num_updates``, saved in the state dict as ``_extra_state``) instead of reading
    the trainer's step: a model initialised from another run's weights (domain-adaptation stage 2, ``init_from``)
    carries the count on, so its warm-up does not restart and replace the loaded average with the raw weights
    within ten steps. Checkpoints written before the count existed are read with ``num_updates`` = their global step
    (:func:`jointdiff.models.checkpoints.upgrade_checkpoint`).
    """

    def __init__(self, network: nn.Module, decay: float = 0.9999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(network).requires_grad_(False).eval()
        self.num_updates = 0  # a Python int: reading it never syncs the device

    def train(self, mode: bool = True) -> EMA:
        # The average is for evaluation only: keep it in eval mode whatever the parent module does.
        return super().train(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    def get_extra_state(self) -> torch.Tensor:
        # a 0-d CPU tensor (not a dict) so that state dicts stay tensor-valued for every consumer
        return torch.tensor(self.num_updates, dtype=torch.long)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.num_updates = int(state)

    def follow(self, optimizer: torch.optim.Optimizer, network: nn.Module) -> torch.optim.Optimizer:
        """Update towards ``network`` after every step ``optimizer`` really takes, and return ``optimizer``.

        An optimizer step-post hook, not a batch-end hook: it runs once per optimizer step under gradient
        accumulation, not after a step that mixed precision's GradScaler skipped (inf/NaN gradients), and inside the
        optimizer step, so a checkpoint saved at the end of that batch (``ModelCheckpoint`` runs its batch-end hook
        before the module's) holds the EMA of the same step as the weights."""
        optimizer.register_step_post_hook(lambda *_: self.update(network))
        return optimizer

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """One EMA step towards ``network``'s weights, the ``num_updates``-th (counted from 1)."""
        self.num_updates += 1
        weight = 1.0 - self.decay_at(self.num_updates)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in network.parameters()]
        torch._foreach_lerp_(ema_params, params, weight)
        ema_buffers = list(self.module.buffers())
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, list(network.buffers()))
