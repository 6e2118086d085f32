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

    The decay warms up as ``d_k = min(decay, (1+k)/(10+k))`` at update ``k`` so that short runs still get a useful
    average (the reference keeps a fixed 0.9999 EMA that it never uses, D6). Floating-point buffers
    (BatchNorm running statistics) are copied, not averaged.
    """

    def __init__(self, network: nn.Module, decay: float = 0.9999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(network).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> EMA:
        # The average is for evaluation only: keep it in eval mode whatever the parent module does.
        return super().train(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, network: nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in network.parameters()]
        torch._foreach_lerp_(ema_params, params, weight)
        ema_buffers = list(self.module.buffers())
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, list(network.buffers()))
