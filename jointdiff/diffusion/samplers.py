"""Samplers: pure loops over an ε-prediction function ``eps_fn(x_t, t) -> ε̂``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from jointdiff.diffusion.gaussian import GaussianDiffusion

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def ddpm_sample(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    clip_denoised: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling over all T steps from ``x_{T-1} ~ N(0, I)`` (spec §3). Returns unclipped floats.

    With the same ``generator`` state the result is deterministic: the initial noise and every step's noise are
    drawn from it in a fixed order.
    """
    x = torch.randn(shape, device=device, generator=generator)
    steps = range(diffusion.num_steps - 1, -1, -1)
    for i in tqdm(steps, desc="sampling", disable=not progress, leave=False):
        t = torch.full((shape[0],), i, device=device, dtype=torch.long)
        eps = eps_fn(x, t)
        noise = torch.randn(shape, device=device, generator=generator)
        x = diffusion.p_sample_step(x, t, eps, noise, clip_denoised)
    return x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map [-1, 1] floats to uint8 as the reference saves samples: ``trunc(clamp((x+1)·127.5, 0, 255))``."""
    return ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)
