"""Gaussian diffusion with ε-prediction and fixed-large variance (docs/design.md §3).

``GaussianDiffusion`` only holds the schedule tables (float64 masters, float32 device copies as non-persistent
buffers so they follow the model to its device without entering checkpoints). Every method is a pure function
of its tensor arguments.
"""

from __future__ import annotations

import torch
from torch import nn

from jointdiff.diffusion.schedules import canonical_schedule, make_beta_schedule


def extract(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table[t]`` reshaped to broadcast over a (B, …) tensor of ``ndim`` dimensions."""
    return table[t].reshape(-1, *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """Schedule tables and the forward/reverse process formulas.

    Step indices run ``0…T-1``; index 0 is the first noising step, ``ᾱ_{-1} := 1``. ``dtype`` is the tables'
    precision (float32 for training; float64 for checks against closed forms).
    """

    def __init__(self, num_steps: int = 1000, schedule: str = "reference_linear", dtype: torch.dtype = torch.float32):
        super().__init__()
        self.dtype = dtype
        self.num_steps = num_steps
        self.schedule = canonical_schedule(schedule)
        betas = make_beta_schedule(schedule, num_steps)
        alphas = 1.0 - betas
        ab = torch.cumprod(alphas, dim=0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        posterior_var = betas * (1.0 - ab_prev) / (1.0 - ab)
        tables64 = {
            "betas": betas,
            "alphas_cumprod": ab,
            "alphas_cumprod_prev": ab_prev,
            "sqrt_alphas_cumprod": ab.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ab).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / ab).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / ab - 1.0).sqrt(),
            "posterior_mean_coef1": betas * ab_prev.sqrt() / (1.0 - ab),
            "posterior_mean_coef2": (1.0 - ab_prev) * alphas.sqrt() / (1.0 - ab),
            # fixed-large variance: σ_0² = β̃_1, σ_i² = β_i for i ≥ 1
            "sampling_variance": torch.cat([posterior_var[1:2], betas[1:]]),
        }
        self.tables64 = tables64
        for name, value in tables64.items():
            self.register_buffer(name, value.to(dtype), persistent=False)

    def _apply(self, fn, recurse=True):
        # Device moves apply to the tables; dtype casts (``.half()``, ``.double()``, 16-true precision) don't:
        # the tables are rebuilt from the float64 masters in their own dtype on the new device.
        super()._apply(fn, recurse)
        for name, value in self.tables64.items():
            self._buffers[name] = value.to(device=self._buffers[name].device, dtype=self.dtype)
        return self

    # forward process -----------------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε``."""
        n = x0.ndim
        return extract(self.sqrt_alphas_cumprod, t, n) * x0 + extract(self.sqrt_one_minus_alphas_cumprod, t, n) * noise

    # reverse process -----------------------------------------------------------------------------------------
    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t`` in the reference's form ``√(1/ᾱ)·x_t − √(1/ᾱ−1)·ε̂``."""
        n = x_t.ndim
        recip, recipm1 = extract(self.sqrt_recip_alphas_cumprod, t, n), extract(self.sqrt_recipm1_alphas_cumprod, t, n)
        return recip * x_t - recipm1 * eps

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of ``q(x_{t-1} | x_t, x0)``: ``c1_t·x0 + c2_t·x_t``."""
        n = x_t.ndim
        return extract(self.posterior_mean_coef1, t, n) * x0 + extract(self.posterior_mean_coef2, t, n) * x_t

    def p_mean(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, clip_denoised: bool = False
    ) -> torch.Tensor:
        """Mean of ``p(x_{t-1} | x_t)`` given the predicted noise; x̂0 unclipped by default (docs/design.md §3)."""
        x0 = self.predict_x0(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        return self.posterior_mean(x0, x_t, t)

    def p_sample_step(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        noise: torch.Tensor,
        clip_denoised: bool = False,
    ) -> torch.Tensor:
        """One ancestral step ``x_{t-1} = μ + [t>0]·σ_t·ξ``."""
        mean = self.p_mean(x_t, t, eps, clip_denoised)
        nonzero = (t > 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        return mean + nonzero * extract(self.sampling_variance, t, x_t.ndim).sqrt() * noise

    # training --------------------------------------------------------------------------------------------------
    def sample_timesteps(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform ``i ~ U{0…T−1}``, one per example (the reference's uniform schedule sampler)."""
        return torch.randint(0, self.num_steps, (batch,), device=device, generator=generator)


def eps_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """DDPM simple loss: mean over batch and pixels of ``(ε − ε̂)²``."""
    return torch.mean((eps_pred.float() - eps.float()) ** 2)
