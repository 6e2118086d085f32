"""β schedules (spec §3), computed in float64 like the reference."""

from __future__ import annotations

import math

import torch


def linear_beta_schedule(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Linear β from ``1e-4·1000/T`` to ``0.02·1000/T`` (T=1000: 1e-4→0.02; T=500: 2e-4→0.04).

    For T ≤ 20 the reference's scaled end point reaches β ≥ 1 (ᾱ = 0, a NaN sampler); we clip β at ``max_beta``
    like the cosine schedule. For T > 20 nothing is clipped and the schedule is exactly the reference's.
    """
    scale = 1000.0 / num_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64).clamp(max=max_beta)


def cosine_beta_schedule(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal cosine schedule: ``β_i = 1 − ᾱ(i+1)/ᾱ(i)`` with ``ᾱ(t) = cos²((t/T + s)/(1+s)·π/2)``."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


SCHEDULES = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule}


def make_beta_schedule(name: str, num_steps: int) -> torch.Tensor:
    if name not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    return SCHEDULES[name](num_steps)
