"""Classifier-input augmentation of the joint model (docs/design.md §2.4, decision D5).

Modes:
- ``reference``: the authors' Kornia pipeline applied to data in [-1, 1]. Kornia's brightness, contrast,
  sharpness and colour ops clamp to [0, 1], so they collapse the negative half of any sample they touch;
  MixUp (Kornia 0.6.x gating: half the batches, half the samples of those) replaces up to all of a sample
  without changing its label. Kept for reproducing Tables 1/2.
- ``fixed``: the same geometric and photometric ops applied in [0, 1] space and mapped back to [-1, 1];
  no MixUp (our choice: label-preserving MixUp is the other quirk D5 names).
- ``off``: identity (the paper's setting for the semi-supervised Table 5).

The diffusion loss never sees augmented data; validation and sampling never augment.
"""

from __future__ import annotations

from typing import Literal

import kornia.augmentation as K
import torch
from torch import nn

AugmentationMode = Literal["reference", "fixed", "off"]


def label_preserving_mixup(x: torch.Tensor, p_batch: float = 0.5, p_sample: float = 0.5) -> torch.Tensor:
    """The reference's ``RandomMixUpV2(p=0.5)`` under the Kornia 0.6.x releases of the paper's time.

    Kornia makes that ``p`` a *batch* gate (``p_batch``): with probability ``p_batch`` the batch is mixed, else it
    passes unchanged. Kornia 0.6.7–0.7.0's ``MixupGenerator`` also receives ``p`` and multiplies each sample's
    λ by its own Bernoulli(``p_sample``) draw (later releases pass ``p=1.0`` there). In a mixed batch a sample
    becomes ``(1−λ)·x + λ·x[π]`` with λ ~ U(0, 1) with probability ``p_sample`` (else λ = 0), π one in-batch
    permutation. Per step, a quarter of the inputs are mixed and an eighth are mostly another image (λ > ½).

    Labels are *not* mixed (the reference's use). Written here because Kornia's ``RandomMixUpV2`` returns mixed
    labels and, in current releases, gates only the batch.
    """
    # the batch gate is drawn on the CPU: a Python decision without a device sync
    if not bool(torch.rand(()) < p_batch):
        return x
    b = x.shape[0]
    mixed = (torch.rand(b, device=x.device) < p_sample).to(x.dtype)
    perm = torch.randperm(b, device=x.device)
    lam = (torch.rand(b, device=x.device, dtype=x.dtype) * mixed).reshape(b, *([1] * (x.ndim - 1)))
    return (1 - lam) * x + lam * x[perm]


class ClassifierAugmentation(nn.Module):
    def __init__(self, mode: AugmentationMode, image_size: int, channels: int):
        super().__init__()
        if mode not in ("reference", "fixed", "off"):
            raise ValueError(f"classifier augmentation must be reference|fixed|off, got {mode!r}")
        self.mode = mode
        ops: list[nn.Module] = []
        if channels == 3:
            ops.append(K.ColorJitter(0.1, 0.1, 0.1, 0.1, p=0.25))
        ops += [
            K.RandomResizedCrop((image_size, image_size), scale=(0.5, 1.0), p=0.25),
            K.RandomRotation(30.0, p=0.25),
            K.RandomHorizontalFlip(p=0.5),
            K.RandomContrast((0.6, 1.8), p=0.25),
            K.RandomSharpness((0.4, 2.0), p=0.25),
            K.RandomBrightness((0.6, 1.8), p=0.25),
        ]
        self.pipeline = K.ImageSequential(*ops) if mode != "off" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, c, H, W) in [-1, 1]. Identity in eval mode."""
        if self.pipeline is None or not self.training:
            return x
        if self.mode == "reference":
            return label_preserving_mixup(self.pipeline(x))
        return self.pipeline((x + 1) / 2) * 2 - 1
