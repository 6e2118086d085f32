"""Diffusion math as pure tensor functions: schedules, forward process, losses and samplers."""

from jointdiff.diffusion.gaussian import GaussianDiffusion, eps_loss
from jointdiff.diffusion.samplers import ddpm_sample
from jointdiff.diffusion.schedules import (
    cosine_beta_schedule,
    ho_linear_beta_schedule,
    make_beta_schedule,
    reference_linear_beta_schedule,
)

__all__ = [
    "GaussianDiffusion",
    "cosine_beta_schedule",
    "ddpm_sample",
    "eps_loss",
    "ho_linear_beta_schedule",
    "make_beta_schedule",
    "reference_linear_beta_schedule",
]
