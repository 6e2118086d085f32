"""The unconditional ancestral sampler (docs/design.md §3), a configuration of the engine's ``reverse_process``."""

from __future__ import annotations

import torch

from jointdiff.diffusion.engine import EpsFn, Noise, initial_noise, reverse_process
from jointdiff.diffusion.gaussian import GaussianDiffusion

__all__ = ["EpsFn", "ddpm_sample"]


def ddpm_sample(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | Noise | None = None,
    clip_denoised: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling over all T steps from ``x_{T-1} ~ N(0, I)`` (docs/design.md §3). Returns unclipped floats.

    With the same ``generator`` state the result is deterministic: the initial noise and every step's noise are
    drawn from it in a fixed order.
    """
    x = initial_noise(shape, generator, device)
    return reverse_process(eps_fn, diffusion, x, noise=generator, clip_denoised=clip_denoised, progress=progress)

