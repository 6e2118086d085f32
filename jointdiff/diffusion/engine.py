"""The one reverse-process loop every sampler of the package runs (pure tensor code, no Lightning).

:func:`reverse_process` walks an explicit ascending list of original step indices ``timesteps = [τ_0 < … < τ_{S−1}]``
from the noise level of ``τ_{S−1}`` down to a clean sample, one network evaluation per entry. Every sampler is a
configuration of it:

===========================  ===================================================================================
sampler                      configuration
===========================  ===================================================================================
DDPM (ancestral, docs/design.md §3)    ``update="ddpm"``, timesteps ``0…T−1`` (or ``0…n−1`` from an intermediate level)
DDIM (η)                     ``update="ddim"``, any ascending grid (e.g. ``ddim.respaced_timesteps``)
joint conditional (Alg. 1)   a :class:`FeatureSteer` hook on a :class:`SplitDenoiser` (the UNet's encoder/decoder),
                             with either update; on a respaced grid this is new (see :mod:`.conditional`)
classifier guidance (§5.3)   a :class:`MeanShift` hook (``μ ← μ + s·σ²·∇ log p``), ``update="ddpm"``
counterfactual (§6)          joint conditional from ``q(x_{n−1} | x0)`` with timesteps ``0…n−1``
===========================  ===================================================================================

Hooks, in the order they run at each step (guided-diffusion's ``cond_fn`` and k-diffusion's ``callback``)::

    ε̂ = denoiser(x, t)                                        # or, with a steer hook:
    ε̂ = denoiser.decode(steer(denoiser.encode(x, t), step))   # the encoder outputs edited before decoding
    μ, x̂0 = update rule(x, ε̂)                                 # ddpm: posterior mean; ddim: η-DDIM
    μ += mean_shift(x, step)                                   # ddpm only
    x ← μ + σ·ξ ;  on_step(step)                               # step.x0_pred, step.logits (from the steer hook)

Noise ξ (and the initial ``x_T`` of :func:`initial_noise`) comes from a :class:`Noise` source: one generator for the
batch (the classic order: ``x_T`` first, then one draw per step, so α = 0 reproduces DDPM bit for bit) or one
generator per sample seeded by the sample's global index (:class:`PerSampleNoise`), which makes a sample independent
of the batch it is drawn in and of the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from tqdm.auto import tqdm

from jointdiff.diffusion.gaussian import GaussianDiffusion, extract
from jointdiff.diffusion.keyed_noise import keyed_normal, split_key

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Update = Literal["ddpm", "ddim"]


# what the hooks see ------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One reverse step: from the level of ``index`` (original step, ``t`` as a (B,) tensor) to that of ``prev``
    (−1 = clean). ``position`` counts down from ``num - 1`` to 0. Hooks may attach what they computed
    (``logits``: the steer hook's head decision); the loop fills ``x_prev`` and ``x0_pred`` before ``on_step``."""

    index: int
    prev: int
    position: int
    num: int
    t: torch.Tensor
    logits: torch.Tensor | None = None
    x0_pred: torch.Tensor | None = None
    x_prev: torch.Tensor | None = None

    @property
    def stride(self) -> int:
        """Original steps this step covers (1 on the full grid)."""
        return self.index - self.prev


class SplitDenoiser(Protocol):
    """A denoiser split where a feature-steering hook edits it: ``decode(encode(x, t), t) == ε̂(x, t)``."""

    def encode(self, x: torch.Tensor, t: torch.Tensor): ...

    def decode(self, features, t: torch.Tensor) -> torch.Tensor: ...


FeatureSteer = Callable[[object, Step], object]  # (encoder features with a live graph, step) -> edited, detached
MeanShift = Callable[[torch.Tensor, Step], torch.Tensor]  # (x_t, step) -> Δμ, (B, c, H, W)
OnStep = Callable[[Step], None]


# noise -------------------------------------------------------------------------------------------------------------
class Noise(Protocol):
    def __call__(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor: ...


class BatchNoise:
    """Every draw from one generator (or the global RNG): the order of :func:`ddpm_sample` before the engine."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, shape, device, dtype=torch.float32):
        return torch.randn(shape, device=device, dtype=dtype, generator=self.generator)


class PerSampleNoise:
    """Sample ``b`` of the batch draws from its own stream keyed by ``(seed, indices[b])``: draw ``d`` of it is a
    pure function of that key, ``d`` and the element (:func:`jointdiff.diffusion.keyed_noise.keyed_normal`),
    computed for the whole batch on its device. The same seed gives the same images for any batch size, class mix
    or number of processes."""

    def __init__(self, seed: int, indices: Sequence[int]):
        self.keys = torch.tensor([split_key(sample_seed(seed, int(i))) for i in indices], dtype=torch.int32)
        self.keys = self.keys.reshape(-1, 2)  # (B, 2) int32 words
        self.draws = 0  # draws so far: the next one is draw number `draws` of every sample

    def __call__(self, shape, device, dtype=torch.float32):
        if shape[0] != len(self.keys):
            raise ValueError(f"per-sample noise for {len(self.keys)} samples, asked for a batch of {shape[0]}")
        if self.keys.device != torch.device(device):
            self.keys = self.keys.to(device)
        numel = math.prod(shape[1:])
        out = keyed_normal(self.keys, self.draws, numel, dtype).reshape(shape)
        self.draws += 1
        return out


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded ``seed`` (SplitMix64 of both: neighbouring indices and
    seeds get unrelated streams)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


def as_noise(noise: Noise | torch.Generator | None) -> Noise:
    return noise if callable(noise) and not isinstance(noise, torch.Generator) else BatchNoise(noise)


def initial_noise(shape: tuple[int, ...], noise: Noise | torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """``x_T ~ N(0, I)`` from the noise source (the first draw of a run)."""
    return as_noise(noise)(tuple(shape), torch.device(device), torch.float32)


# the loop ----------------------------------------------------------------------------------------------------------
def full_grid(diffusion: GaussianDiffusion, start_step: int | None = None) -> list[int]:
    """``0 … start_step`` (default ``T−1``): the ancestral sampler's grid."""
    last = diffusion.num_steps - 1 if start_step is None else start_step
    return list(range(last + 1))


def check_timesteps(diffusion: GaussianDiffusion, timesteps: Sequence[int] | torch.Tensor) -> list[int]:
    steps = [int(i) for i in torch.as_tensor(timesteps).flatten().tolist()]
    if not steps:
        raise ValueError("timesteps is empty")
    if any(b <= a for a, b in zip(steps[:-1], steps[1:], strict=False)):
        raise ValueError(f"timesteps must be strictly ascending, got {steps[:8]}…")
    if steps[0] < 0 or steps[-1] >= diffusion.num_steps:
        raise ValueError(f"timesteps must lie in 0..{diffusion.num_steps - 1}, got {steps[0]}..{steps[-1]}")
    return steps


def alpha_bar(diffusion: GaussianDiffusion, i: int) -> float:
    """ᾱ_i in float64 from the master table; ``i = −1`` is the clean level (ᾱ = 1)."""
    return 1.0 if i < 0 else float(diffusion.tables64["alphas_cumprod"][i])


def reverse_process(
    denoiser: EpsFn | SplitDenoiser,
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    timesteps: Sequence[int] | torch.Tensor | None = None,
    *,
    update: Update = "ddpm",
    eta: float = 0.0,
    steer: FeatureSteer | None = None,
    mean_shift: MeanShift | None = None,
    on_step: OnStep | None = None,
    noise: Noise | torch.Generator | None = None,
    clip_denoised: bool = False,
    progress: bool = False,
    desc: str = "sampling",
) -> torch.Tensor:
    """Run the reverse process from ``x`` (at the level of ``timesteps[-1]``; default every step, from ``T−1``)
    down to a clean sample. Returns unclipped floats of ``x``'s shape.

    Args:
        denoiser: ``ε̂ = denoiser(x_t, t)`` (``t`` a (B,) LongTensor of original indices); with ``steer`` it must
            also have ``encode``/``decode`` (:class:`SplitDenoiser`).
        update: ``ddpm``: ancestral step with the model's fixed variance (:meth:`GaussianDiffusion.p_sample_step`);
            needs a contiguous grid ``0…n−1``. ``ddim``: η-DDIM between consecutive grid entries, any grid.
        eta: DDIM's η (0: deterministic, no noise drawn).
        steer: edits the encoder outputs before decoding (joint conditional sampling).
        mean_shift: adds to the ancestral mean (classifier guidance); ``ddpm`` only.
        on_step: called after each step with its :class:`Step` (progress, traces, snapshots).
        noise: a :class:`Noise` source or a generator; draws one ξ per step (none for η = 0 DDIM).
        clip_denoised: clamp x̂0 to [-1, 1] (and, for DDIM, re-derive ε̂ from it).
    """
    steps = check_timesteps(diffusion, full_grid(diffusion) if timesteps is None else timesteps)
    if update == "ddpm":
        if steps != list(range(len(steps))):
            raise ValueError("the ddpm update runs a contiguous grid 0…n−1; use update='ddim' on a respaced grid")
    elif update == "ddim":
        if mean_shift is not None:
            raise ValueError("a mean-shift hook (classifier guidance) needs update='ddpm'")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
    else:
        raise ValueError(f"update must be 'ddpm' or 'ddim', got {update!r}")
    if steer is not None and not hasattr(denoiser, "encode"):
        raise ValueError("a feature-steering hook needs a denoiser with encode/decode (a SplitDenoiser)")
    draw = as_noise(noise)
    batch = x.shape[0]
    pairs = list(zip(steps, [-1] + steps[:-1], strict=True))[::-1]
    for position, (i, prev) in tqdm(list(zip(range(len(pairs) - 1, -1, -1), pairs, strict=True)), desc=desc,
                                    disable=not progress, leave=False):
        step = Step(i, prev, position, len(pairs), torch.full((batch,), i, device=x.device, dtype=torch.long))
        eps = _predict_eps(denoiser, x, step, steer)
        with torch.no_grad():
            if update == "ddpm":
                x0 = diffusion.predict_x0(x, step.t, eps)
                if clip_denoised:
                    x0 = x0.clamp(-1.0, 1.0)
                mean = diffusion.posterior_mean(x0, x, step.t)
                variance = extract(diffusion.sampling_variance, step.t, x.ndim)
            else:
                mean, x0, sigma = _ddim_mean(diffusion, x, eps, i, prev, eta, clip_denoised)
        if mean_shift is not None:
            mean = mean + mean_shift(x, step)
        with torch.no_grad():
            if update == "ddpm":
                xi = draw(x.shape, x.device, x.dtype)
                nonzero = (step.t > 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
                x = mean + nonzero * variance.sqrt() * xi
            else:
                x = mean + sigma * draw(x.shape, x.device, x.dtype) if sigma > 0 else mean
        if on_step is not None:
            step.x0_pred, step.x_prev = x0, x
            on_step(step)
    return x


def _predict_eps(denoiser, x: torch.Tensor, step: Step, steer: FeatureSteer | None) -> torch.Tensor:
    if steer is None:
        with torch.no_grad():
            return denoiser(x, step.t)
    with torch.enable_grad():
        # x needs a graph only so that the encoder's outputs have one when the weights are frozen (EMA copies);
        # the hook's autograd.grad stops at the features and never forms a gradient for x or the weights.
        features = denoiser.encode(x.detach().requires_grad_(True), step.t)
        features = steer(features, step)
    with torch.no_grad():
        return denoiser.decode(features, step.t)


def _ddim_mean(diffusion, x, eps, i: int, prev: int, eta: float, clip_denoised: bool):
    """η-DDIM from the level of ``i`` to that of ``prev`` (guided-diffusion's ``ddim_sample``), coefficients from
    the float64 tables: returns ``(mean, x̂0, σ)`` with ``x_prev = mean + σ·ξ``."""
    ab, ab_prev = alpha_bar(diffusion, i), alpha_bar(diffusion, prev)
    x0 = (x - (1.0 - ab) ** 0.5 * eps) / ab**0.5
    if clip_denoised:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x - ab**0.5 * x0) / (1.0 - ab) ** 0.5
    sigma = eta * ((1.0 - ab_prev) / (1.0 - ab)) ** 0.5 * (1.0 - ab / ab_prev) ** 0.5
    return ab_prev**0.5 * x0 + max(1.0 - ab_prev - sigma**2, 0.0) ** 0.5 * eps, x0, sigma
