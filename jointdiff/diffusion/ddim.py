"""DDIM (Song et al. 2021) over a respaced subset of the T training steps, and its deterministic inversion.

The update itself is the engine's ``update="ddim"`` (:mod:`jointdiff.diffusion.engine`); this module holds the
grid (:func:`respaced_timesteps`) and the inversion. The joint conditional sampler can run on such a grid too
(:mod:`jointdiff.diffusion.conditional`; the reference runs it over all T ancestral steps only, D22).

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

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from jointdiff.diffusion.engine import EpsFn, Noise, alpha_bar, check_timesteps, reverse_process
from jointdiff.diffusion.gaussian import GaussianDiffusion


def space_timesteps(num_steps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """guided-diffusion's ``space_timesteps`` (``respace.py``), ascending: which of the ``num_steps`` original
    steps a respaced sampler keeps.

    ``section_counts``: a count ``S`` (one section), a list of counts or a string ``"10,15,20"`` (the original
    steps are cut into that many nearly equal sections, each strided to its count), or ``"ddimN"`` (the integer
    stride of the DDIM paper: ``range(0, T, k)`` for the smallest ``k`` giving exactly N steps). Within a section of
    ``size`` steps, ``frac_stride = (size−1)/(count−1)`` is *added up* in floating point and each running sum is
    rounded with Python's ``round`` (half to even), exactly as there. Accumulating, rather than computing
    ``round(k·frac_stride)``, changes the result wherever the running sum falls just below a half (T=1000, S=21:
    step 499, not 500) — 278 of the 1000 counts at T=1000 differ.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_steps):
                if len(range(0, num_steps, stride)) == desired:
                    return list(range(0, num_steps, stride))
            raise ValueError(f"cannot create exactly {desired} steps out of {num_steps} with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    if not section_counts or any(c < 1 for c in section_counts):
        raise ValueError(f"step counts must be >= 1, got {list(section_counts)}")
    size_per, extra = divmod(num_steps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"cannot take {count} sampling steps out of a section of {size} diffusion steps (T={num_steps})"
            )
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += frac_stride
        start += size
    return sorted(set(steps))


# The η that respaced joint and unconditional sampling use when none is given (`jointdiff sample --steps N`, the
# α sweep, the demo's grids): chosen by the designed validation of docs/sampling.md ("Respaced joint sampling: the
# designed validation", reading rule 2: at 50 steps η = 1 matches the full chain with the lowest Fréchet distance;
# η = 0 falls 0.13-0.16 below it). tests/test_respaced_validation.py pins both values to that reading.
RESPACED_ETA = 1.0
# The respaced steps that the α sweep and the demo's class-conditional grid draw with unless told otherwise
# (`"all"`: the full ancestral chain), from the same validation (rule 4: the fewest steps at which η = 1 matches).
SWEEP_STEPS: int | str = 25


def respaced_timesteps(num_steps: int, sample_steps: int | str) -> torch.LongTensor:
    """The original indices a respaced sampler visits, ascending: ``space_timesteps(T, S)`` (0 and T−1 included
    for an integer ``S ≥ 2``; ``"ddimN"`` or ``"10,15,20"`` forms are passed through). ``S == T`` gives every step.
    """
    if isinstance(sample_steps, int) and not 1 <= sample_steps <= num_steps:
        raise ValueError(f"sample_steps must be in 1..{num_steps} (the number of diffusion steps), got {sample_steps}")
    return torch.tensor(space_timesteps(num_steps, sample_steps), dtype=torch.long)


def ddim_sample(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | Noise | None = None,
    progress: bool = False,
    *,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """Run DDIM from ``x_T`` (at the noise level of ``timesteps[-1]``) down to a clean sample: the engine's
    ``update="ddim"``.

    Args:
        eps_fn: ``eps_fn(x_t, t) -> ε̂`` with ``t`` a (B,) LongTensor of original step indices.
        x_T: (B, …) start; for sampling from scratch, ``torch.randn`` (or the output of :func:`ddim_invert`).
        timesteps: ascending original indices, e.g. :func:`respaced_timesteps`.
        eta: 0 is deterministic DDIM; 1 over all T steps is ancestral sampling with the posterior variance β̃.
        generator: draws the noise ξ when ``eta > 0`` (no random numbers are drawn when ``eta == 0``).
        clip_denoised: clamp x̂0 to [-1, 1] and re-derive ε̂ from it (guided-diffusion's option; off by default,
            as every sampler of the reference).
    """
    return reverse_process(eps_fn, diffusion, x_T, timesteps, update="ddim", eta=eta, noise=generator,
                           clip_denoised=clip_denoised, progress=progress, desc="ddim")


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
    steps = check_timesteps(diffusion, timesteps)
    x = x0
    batch = x.shape[0]
    prevs = [-1] + steps[:-1]
    for i, prev in tqdm(list(zip(steps, prevs, strict=True)), desc="ddim inversion", disable=not progress, leave=False):
        t = torch.full((batch,), max(prev, 0), device=x.device, dtype=torch.long)
        eps = eps_fn(x, t)
        ab_cur, ab_next = alpha_bar(diffusion, prev), alpha_bar(diffusion, i)
        x0_pred = (x - (1.0 - ab_cur) ** 0.5 * eps) / ab_cur**0.5
        x = ab_next**0.5 * x0_pred + (1.0 - ab_next) ** 0.5 * eps
    return x
