"""Fréchet distance between Gaussian fits of two feature sets (FID when the features are Inception pool3).

The distance itself is torch-fidelity's ``fid_statistics_to_metric`` (``‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2·Σ√eig(Σ₁Σ₂)``,
the TTUR formula torchmetrics also uses). This module only adds a torchmetrics ``Metric`` that accumulates the
statistics in float64 over batches and processes; unlike torchmetrics' ``FrechetInceptionDistance`` it takes
features rather than images, so reference statistics can be cached and any extractor plugged in.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torchmetrics import Metric

from jointdiff.metrics.feature_sets import check_features


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64 numpy arrays)."""
    out = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False)
    return float(out[KEY_METRIC_FID])


def gaussian_fit(total: torch.Tensor, outer: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance from Σx (D,), Σxxᵀ (D, D) and N, in float64."""
    mu = total / n
    sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
    return mu.cpu().numpy(), sigma.cpu().numpy()


class FrechetDistance(Metric):
    """FID on features: ``update(features (B, D), real: bool)``, ``compute() -> scalar float64 tensor``.

    States are Σx, Σxxᵀ and N per set in float64, summed across processes.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, num_features: int, **kwargs):
        super().__init__(**kwargs)
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        for which in ("real", "fake"):
            self.add_state(f"{which}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{which}_outer", torch.zeros(num_features, num_features, dtype=torch.float64), dist_reduce_fx="sum"
            )
            self.add_state(f"{which}_n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor, real: bool) -> None:
        check_features(features, self.num_features)
        f = features.detach().to(torch.float64)
        which = "real" if real else "fake"
        getattr(self, f"{which}_sum").add_(f.sum(dim=0))
        getattr(self, f"{which}_outer").add_(f.T @ f)
        getattr(self, f"{which}_n").add_(f.shape[0])

    def compute(self) -> torch.Tensor:
        n_real, n_fake = int(self.real_n), int(self.fake_n)
        if n_real < 2 or n_fake < 2:
            raise RuntimeError(f"FID needs at least 2 real and 2 generated samples, got {n_real} and {n_fake}")
        mu_r, sigma_r = gaussian_fit(self.real_sum, self.real_outer, n_real)
        mu_f, sigma_f = gaussian_fit(self.fake_sum, self.fake_outer, n_fake)
        return torch.tensor(frechet_distance(mu_f, sigma_f, mu_r, sigma_r), dtype=torch.float64)
