"""The pooled representation ``z`` and the classifier head ``g`` of docs/design.md §2.2–2.3."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def pooled_features(middle: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
    """``z = [GAP(m), GAP(e_1), …, GAP(e_K)]``: (B, F), middle output first, then skips in creation order."""
    return torch.cat([middle.mean(dim=(-2, -1))] + [e.mean(dim=(-2, -1)) for e in skips], dim=1)


class PooledFeatureHead(nn.Module):
    """MLP on ``[z, i]`` (docs/design.md §2.3): the raw step index is appended as one unnormalised feature (D21).

    Dropout(p) → BatchNorm1d(F+1) → Linear(F+1 → ⌊F/2⌋) → LeakyReLU(0.01) → Dropout(p) → BatchNorm1d(⌊F/2⌋)
    → Linear(⌊F/2⌋ → num_outputs). Returns logits.
    """

    def __init__(self, feature_dim: int, num_outputs: int, dropout: float = 0.7):
        super().__init__()
        hidden = feature_dim // 2
        self.feature_dim = feature_dim
        self.layers = nn.Sequential(
            nn.Dropout(dropout),
            nn.BatchNorm1d(feature_dim + 1),
            nn.Linear(feature_dim + 1, hidden),
            nn.LeakyReLU(0.01),
            nn.Dropout(dropout),
            nn.BatchNorm1d(hidden),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z: (B, F) pooled features; t: (B,) step indices → (B, num_outputs) logits."""
        return self.layers(torch.cat([z, t[:, None].to(z.dtype)], dim=1))
