"""DDIM (Song et al. 2021) over a respaced subset of the T training steps, and its deterministic inversion.

Only for ε-prediction models sampled without a classifier in the loop (vanilla DDPM, PDAE); the joint
conditional sampler runs all T ancestral steps (spec D22).

Convention. ``timesteps = [τ_0 < τ_1 < … < τ_{S-1}]`` are *original* step indices with ``τ_0 = 0``. The sampler
holds ``x`` at the noise level of ``τ_k`` and moves it to the level of ``τ_{k-1}``; below ``τ_0`` is the clean
level ``ᾱ := 1``. Each step evaluates ``eps_fn(x, τ_k)`` once, so a run costs S network evaluations. With
``σ_k = η·√((1−ᾱ_prev)/(1−ᾱ_k))·√(1−ᾱ_k/ᾱ_prev)``::

    x̂0     = (x − √(1−ᾱ_k)·ε̂)/√ᾱ_k
    x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ_k²)·ε̂ + σ_k·ξ

which is guided-diffusion's ``ddim_sample``. The per-step coefficients are taken from the float64 tables and
rounded once to the sample's dtype.

Written by hand because diffusers' ``DDIMScheduler`` carries its own β table and timestep conventions (its
``set_timesteps`` spacings never include both 0 and T−1 the way guided-diffusion's respacing does), and the
whole sampler is ten lines on top of :class:`~jointdiff.diffusion.gaussian.GaussianDiffusion`.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from jointdiff.diffusion.gaussian import GaussianDiffusion
from jointdiff.diffusion.samplers import EpsFn


def respaced_timesteps(num_steps: int, sample_steps: int) -> torch.LongTensor:
    """``sample_steps`` evenly spaced original indices of ``0…num_steps−1``, ascending, including 0 and T−1.

    guided-diffusion's ``space_timesteps(T, [S])``: ``round(k·(T−1)/(S−1))`` for ``k = 0…S−1`` (Python's
    round-half-to-even, as there). ``sample_steps == num_steps`` gives every step.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 1 <= sample_steps <= num_steps:
        raise ValueError(f"sample_steps must be in 1..{num_steps} (the number of diffusion steps), got {sample_steps}")
    if sample_steps == 1:
        return torch.zeros(1, dtype=torch.long)
    stride = (num_steps - 1) / (sample_steps - 1)
    return torch.tensor([round(k * stride) for k in range(sample_steps)], dtype=torch.long)


def _check_timesteps(diffusion: GaussianDiffusion, timesteps: torch.Tensor) -> list[int]:
    steps = [int(i) for i in torch.as_tensor(timesteps).flatten().tolist()]
    if not steps:
        raise ValueError("timesteps is empty")
    if any(b <= a for a, b in zip(steps[:-1], steps[1:], strict=True)):
        raise ValueError(f"timesteps must be strictly ascending, got {steps[:8]}…")
    if steps[0] < 0 or steps[-1] >= diffusion.num_steps:
        raise ValueError(f"timesteps must lie in 0..{diffusion.num_steps - 1}, got {steps[0]}..{steps[-1]}")
    return steps


def _alpha_bar(diffusion: GaussianDiffusion, i: int) -> float:
    """ᾱ_i in float64 from the master table; ``i = −1`` is the clean level (ᾱ = 1)."""
    return 1.0 if i < 0 else float(diffusion.tables64["alphas_cumprod"][i])


@torch.no_grad()
def ddim_sample(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    *,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """Run DDIM from ``x_T`` (at the noise level of ``timesteps[-1]``) down to a clean sample.

    Args:
        eps_fn: ``eps_fn(x_t, t) -> ε̂`` with ``t`` a (B,) LongTensor of original step indices.
        x_T: (B, …) start; for sampling from scratch, ``torch.randn`` (or the output of :func:`ddim_invert`).
        timesteps: ascending original indices, e.g. :func:`respaced_timesteps`.
        eta: 0 is deterministic DDIM; 1 over all T steps is ancestral sampling with the posterior variance β̃.
        generator: draws the noise ξ when ``eta > 0`` (no random numbers are drawn when ``eta == 0``).
        clip_denoised: clamp x̂0 to [-1, 1] and re-derive ε̂ from it (guided-diffusion's option; off by default,
            as every sampler of the reference).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    steps = _check_timesteps(diffusion, timesteps)
    x = x_T
    batch = x.shape[0]
    prevs = [-1] + steps[:-1]
    for i, prev in tqdm(list(zip(steps, prevs, strict=True))[::-1], desc="ddim", disable=not progress, leave=False):
        t = torch.full((batch,), i, device=x.device, dtype=torch.long)
        eps = eps_fn(x, t)
        ab, ab_prev = _alpha_bar(diffusion, i), _alpha_bar(diffusion, prev)
        x0 = (x - (1.0 - ab) ** 0.5 * eps) / ab**0.5
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - ab**0.5 * x0) / (1.0 - ab) ** 0.5
        sigma = eta * ((1.0 - ab_prev) / (1.0 - ab)) ** 0.5 * (1.0 - ab / ab_prev) ** 0.5
        x = ab_prev**0.5 * x0 + max(1.0 - ab_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    return x


@torch.no_grad()
def ddim_invert(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic (η = 0) DDIM inversion: encode a clean ``x0`` into the ``x_T`` at the level of
    ``timesteps[-1]`` from which :func:`ddim_sample` with ``eta=0`` and the same ``timesteps`` returns ≈ ``x0``.

    Each step moves from the level of ``τ_{k-1}`` to that of ``τ_k`` with ε̂ evaluated at the current point and
    step ``τ_{k-1}`` (``τ_0 = 0`` for the first step out of the clean level), the usual first-order inversion
    (guided-diffusion's ``ddim_reverse_sample``, diffusers' ``DDIMInverseScheduler``); it is exact when ε̂ does
    not change between neighbouring steps and close for a smooth ``eps_fn`` and enough steps.
    """
    steps = _check_timesteps(diffusion, timesteps)
    x = x0
    batch = x.shape[0]
    prevs = [-1] + steps[:-1]
    for i, prev in tqdm(list(zip(steps, prevs, strict=True)), desc="ddim inversion", disable=not progress, leave=False):
        t = torch.full((batch,), max(prev, 0), device=x.device, dtype=torch.long)
        eps = eps_fn(x, t)
        ab_cur, ab_next = _alpha_bar(diffusion, prev), _alpha_bar(diffusion, i)
        x0_pred = (x - (1.0 - ab_cur) ** 0.5 * eps) / ab_cur**0.5
        x = ab_next**0.5 * x0_pred + (1.0 - ab_next) ** 0.5 * eps
    return x
