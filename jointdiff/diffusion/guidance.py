"""Classifier guidance (Dhariwal & Nichol 2021), the baseline of the paper's Table 2 (docs/design.md §5.3, D12).

An external noise-aware classifier ``logits_fn(x_t, t)`` shifts the mean of every ancestral step::

    μ' = μ(x_i, ε̂) + s·σ_i²·∇_x Σ_b log p(y_b | x_i, i)          σ_i² = fixed-large variance

with ``log p`` the log-softmax of the target class (multiclass) or ``−BCE-with-logits`` summed over attributes
(multi-label: D12's fix of the reference's sign bug, i.e. toward the target attributes). x̂0 is clipped to
[-1, 1] by default, as guided-diffusion's ``classifier_sample.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from jointdiff.diffusion.engine import EpsFn, MeanShift, Noise, Step, initial_noise, reverse_process
from jointdiff.diffusion.gaussian import GaussianDiffusion, extract
from jointdiff.tasks import check_targets, classification_loss

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guidance_gradient(
    logits_fn: LogitsFn, x_t: torch.Tensor, t: torch.Tensor, targets: torch.Tensor, task: str
) -> torch.Tensor:
    """``∇_x Σ_b log p(y_b | x_t, t)``, (B, c, H, W); the summed objective keeps per-sample gradients separate."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(-classification_loss(logits_fn(x, t), targets, task, reduction="sum"), [x])
    return grad


def guidance_shift(
    logits_fn: LogitsFn, diffusion: GaussianDiffusion, targets: torch.Tensor, scale: float, task: str
) -> MeanShift:
    """The engine's mean-shift hook of classifier guidance: ``Δμ = s·σ_i²·∇_x Σ_b log p(y_b | x_i, i)``."""

    def shift(x: torch.Tensor, step: Step) -> torch.Tensor:
        variance = extract(diffusion.sampling_variance, step.t, x.ndim)
        return scale * variance * guidance_gradient(logits_fn, x, step.t, targets, task)

    return shift


def classifier_guided_sample(
    eps_fn: EpsFn,
    logits_fn: LogitsFn,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    targets: torch.Tensor,
    scale: float = 1.0,
    *,
    num_classes: int,
    task: str = "multiclass",
    device: torch.device | str = "cpu",
    generator: torch.Generator | Noise | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling over all T steps with the mean shifted by ``s·σ²·∇ log p(y | x_t)``.

    Draws the initial and per-step noise from ``generator`` in the order :func:`ddpm_sample` does, so ``scale=0``
    reproduces ``ddpm_sample(..., clip_denoised=clip_denoised)`` bit for bit (the classifier still runs).
    ``logits_fn`` must be in eval mode; ``num_classes`` is its number of outputs.
    """
    if not scale >= 0:
        raise ValueError(f"guidance scale must be >= 0, got {scale}")
    targets = check_targets(targets.to(device), num_classes, task, batch=shape[0])
    x = initial_noise(shape, generator, device)
    return reverse_process(eps_fn, diffusion, x, mean_shift=guidance_shift(logits_fn, diffusion, targets, scale, task),
                           noise=generator, clip_denoised=clip_denoised, progress=progress, desc="guided sampling")
