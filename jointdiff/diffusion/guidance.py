"""Classifier guidance (Dhariwal & Nichol 2021), the baseline of the paper's Table 2 (spec §5.3, D12).

An external noise-aware classifier ``logits_fn(x_t, t)`` shifts the mean of every ancestral step::

    μ' = μ(x_i, ε̂) + s·σ_i²·∇_x Σ_b log p(y_b | x_i, i)          σ_i² = fixed-large variance

with ``log p`` the log-softmax of the target class (multiclass) or ``−BCE-with-logits`` summed over attributes
(multi-label: D12's fix of the reference's sign bug, i.e. toward the target attributes). x̂0 is clipped to
[-1, 1] by default, as guided-diffusion's ``classifier_sample.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from jointdiff.diffusion.gaussian import GaussianDiffusion, extract
from jointdiff.diffusion.samplers import EpsFn
from jointdiff.diffusion.targets import check_targets, target_loss

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guidance_gradient(
    logits_fn: LogitsFn, x_t: torch.Tensor, t: torch.Tensor, targets: torch.Tensor, task: str
) -> torch.Tensor:
    """``∇_x Σ_b log p(y_b | x_t, t)``, (B, c, H, W); the summed objective keeps per-sample gradients separate."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(-target_loss(logits_fn(x, t), targets, task), [x])
    return grad


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
    generator: torch.Generator | None = None,
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
    x = torch.randn(shape, device=device, generator=generator)
    for i in tqdm(range(diffusion.num_steps - 1, -1, -1), desc="guided sampling", disable=not progress, leave=False):
        t = torch.full((shape[0],), i, device=device, dtype=torch.long)
        with torch.no_grad():
            eps = eps_fn(x, t)
            mean = diffusion.p_mean(x, t, eps, clip_denoised)
        variance = extract(diffusion.sampling_variance, t, x.ndim)
        mean = mean + scale * variance * guidance_gradient(logits_fn, x, t, targets, task)
        noise = torch.randn(shape, device=device, generator=generator)
        nonzero = (t > 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        x = mean + nonzero * variance.sqrt() * noise  # the last line of GaussianDiffusion.p_sample_step
    return x
