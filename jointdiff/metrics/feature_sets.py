"""Base of the metrics that need every feature vector of both sets (k-NN and PRD precision/recall).

States are lists concatenated across processes (``dist_reduce_fx="cat"``), so rows arrive in an order that depends
on the number of processes. The metrics therefore first put each set in a *canonical order* (sorted by a fixed
random projection): k-means and chunked distance computations then see the same sequence whatever the number of
processes, and a result depends only on the two sets, not on how they were fed.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

_PROJECTION_SEED = 20180523


def canonical_order(features: torch.Tensor) -> torch.Tensor:
    """(N,) permutation sorting the rows of ``features`` (N, D) by a fixed random projection (float64, stable).

    Rows that tie are identical up to a measure-zero event, so swapping them changes nothing."""
    g = torch.Generator().manual_seed(_PROJECTION_SEED)
    direction = torch.randn(features.shape[1], generator=g, dtype=torch.float64).to(features.device)
    return torch.argsort(features.to(torch.float64) @ direction, stable=True)


def canonical(features: torch.Tensor) -> torch.Tensor:
    return features[canonical_order(features)]


def check_features(features: torch.Tensor, dim: int | None = None) -> None:
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    if dim is not None and features.shape[1] != dim:
        raise ValueError(f"features have D={features.shape[1]}, this metric was built for D={dim}")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or inf (diverged samples?); refusing to compute a score from them")


class FeatureSetMetric(Metric):
    """Keeps the real and generated feature vectors; ``update(features, real)`` like torchmetrics' FID."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor, real: bool) -> None:
        """features: (B, D) of real (``real=True``) or generated images."""
        check_features(features)
        (self.real_features if real else self.fake_features).append(features.detach().float())

    def feature_sets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(generated, real), each (N, D) in canonical order."""
        # lists before a sync, tensors after one
        fake = dim_zero_cat(self.fake_features) if len(self.fake_features) else None
        real = dim_zero_cat(self.real_features) if len(self.real_features) else None
        if fake is None or real is None or fake.ndim != 2 or real.ndim != 2:
            raise RuntimeError(f"{type(self).__name__}: no generated or no real features were given")
        if fake.shape[1] != real.shape[1]:
            raise ValueError(f"generated features have D={fake.shape[1]} but real ones D={real.shape[1]}")
        return canonical(fake), canonical(real)
