"""The joint network: a UNet denoiser whose encoder features also feed a classifier head."""

from __future__ import annotations

import torch
from torch import nn

from jointdiff.nn.heads import PooledFeatureHead, pooled_features
from jointdiff.nn.unet import UNet


class JointNetwork(nn.Module):
    """UNet + optional :class:`PooledFeatureHead` (``head=None`` is the vanilla DDPM).

    This is the unit whose weights the joint model trains and whose EMA copy it evaluates and samples with.
    """

    def __init__(self, unet: UNet, num_outputs: int | None, head_dropout: float = 0.7):
        super().__init__()
        self.unet = unet
        self.head = PooledFeatureHead(unet.feature_dim, num_outputs, head_dropout) if num_outputs else None

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise ε̂(x_t, t)."""
        return self.unet(x, t)

    def encode(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder's outputs ``(m, [e_1…e_K])``: all the decoder consumes and all the head reads."""
        return self.unet.encode(x, t)

    def decode(self, features: tuple[torch.Tensor, list[torch.Tensor]], t: torch.Tensor) -> torch.Tensor:
        """ε̂ from (possibly edited) encoder outputs: ``decode(encode(x, t), t) == self(x, t)``."""
        middle, skips = features
        return self.unet.decode(middle, skips, t)

    def denoise_with_features(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One UNet pass → (ε̂(x_t, t), pooled encoder features z (B, F)): the diffusion output and the head's
        input from the same encoder pass (used when the classifier term's input is the diffusion's own x_t)."""
        middle, skips = self.unet.encode(x, t)
        return self.unet.decode(middle, skips, t), pooled_features(middle, skips)

    def representation(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The pooled representation z (B, F) of an encoder-only pass (docs/design.md §2.2)."""
        return pooled_features(*self.unet.encode(x, t))

    def classify_pooled(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits ``g([z, t])`` from pooled features z: (B, F)."""
        if self.head is None:
            raise RuntimeError("this network has no classifier head (classifier_weight=0)")
        return self.head(z, t)

    def classify_features(self, middle: torch.Tensor, skips: list[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        """Logits ``g([z(m, e), t])`` from encoder outputs (the conditional sampler differentiates through this)."""
        return self.classify_pooled(pooled_features(middle, skips), t)

    def classify(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits of the head on an encoder-only pass (a separate pass from the diffusion one, as the reference)."""
        middle, skips = self.unet.encode(x, t)
        return self.classify_features(middle, skips, t)
