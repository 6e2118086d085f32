"""β schedules (docs/fidelity.md, item 1), computed in float64 like the reference.

Two linear schedules exist and are easy to confuse, so they carry distinct names:

- ``reference_linear`` — the authors' fork of guided-diffusion (``get_named_beta_schedule``): for ``T ≥ 10``,
  ``scale = 1000/T`` and β runs from ``scale·1e-3`` to ``scale·0.02`` (T=1000: 1e-3 → 0.02; T=500: 2e-3 → 0.04);
  for ``T < 10``, ``scale = 100/T`` and β runs from ``scale·0.01`` to ``scale·0.02``. The paper's models were
  trained on it; it is the default of every model and config.
- ``ho_linear`` — Ho et al. (2020) and upstream guided-diffusion: β from ``1e-4·1000/T`` to ``0.02·1000/T``
  (T=500: 2e-4 → 0.04). Before 2026-12-02 this project called it ``linear`` and used it everywhere; the name
  ``linear`` is still read from those checkpoints (:data:`LEGACY_NAMES`) but rejected in new configs.

Both are clipped at ``max_beta``: for ``10 ≤ T ≤ 20`` the scaled end point reaches β ≥ 1 (ᾱ = 0, a NaN sampler),
so β is clipped like the cosine schedule's. For ``T > 20`` (and ``T < 10``) nothing is clipped and the schedule
is exactly the formula above.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

# What a model or config may name (the legacy ``linear`` is read from old checkpoints only).
BetaSchedule = Literal["reference_linear", "ho_linear", "cosine"]


def _linspace(start: float, end: float, num: int) -> torch.Tensor:
    # numpy's linspace, as the reference calls it: torch.linspace rounds differently in the last bit
    return torch.tensor(np.linspace(start, end, num, dtype=np.float64))  # (a factory: honours the default device)


def reference_linear_beta_schedule(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """The authors' fork: ``linspace(scale·m, scale·0.02, T)`` with (scale, m) = (1000/T, 1e-3), or (100/T, 1e-2)
    for ``T < 10``."""
    scale, start = (100.0 / num_steps, 0.01) if num_steps < 10 else (1000.0 / num_steps, 0.001)
    return _linspace(scale * start, scale * 0.02, num_steps).clamp(max=max_beta)


def ho_linear_beta_schedule(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Ho et al. (2020): ``linspace(1e-4·1000/T, 0.02·1000/T, T)`` (T=1000: 1e-4 → 0.02)."""
    scale = 1000.0 / num_steps
    return _linspace(scale * 1e-4, scale * 0.02, num_steps).clamp(max=max_beta)


def cosine_beta_schedule(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal cosine schedule: ``β_i = 1 − ᾱ(i+1)/ᾱ(i)`` with ``ᾱ(t) = cos²((t/T + s)/(1+s)·π/2)``."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


SCHEDULES = {
    "reference_linear": reference_linear_beta_schedule,
    "ho_linear": ho_linear_beta_schedule,
    "cosine": cosine_beta_schedule,
}
# Names of earlier versions, as they appear in the hyper-parameters of old checkpoints → what they computed.
LEGACY_NAMES = {"linear": "ho_linear"}


def canonical_schedule(name: str) -> str:
    """The schedule's current name; ``linear`` (checkpoints written before 2026-12-02) is ``ho_linear``."""
    name = LEGACY_NAMES.get(name, name)
    if name not in SCHEDULES:
        hint = " ('linear' was split in two: reference_linear is the authors' code, ho_linear Ho et al.'s)"
        raise ValueError(f"unknown beta schedule {name!r}; choose one of {sorted(SCHEDULES)}{hint}")
    return name


def make_beta_schedule(name: str, num_steps: int) -> torch.Tensor:
    name = canonical_schedule(name)
    if num_steps < 2:
        raise ValueError(f"the number of diffusion steps (diffusion_steps, T) must be >= 2, got {num_steps}")
    return SCHEDULES[name](num_steps)
