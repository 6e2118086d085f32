"""Image ranges and image files, the one home for them: every layer converts between the model's [-1, 1] floats,
uint8 pixels and [0, 1] display values here, and writes PNG grids here.

Two float → uint8 maps exist on purpose, named by what they reproduce:
- ``truncate`` — ``trunc(clamp((x+1)·127.5, 0, 255))``, how the reference code saves its samples (``to_uint8``'s
  default, used for every sample file);
- ``round`` — ``round(clamp((x+1)·127.5, 0, 255))``, the exact inverse of :func:`from_uint8` (a uint8 image maps
  back to itself), how a PNG writer quantises; the feature extractors score images this way (docs/design.md §10).

This module imports nothing from the package: every layer may use it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch

Rounding = Literal["truncate", "round"]


def to_uint8(x: torch.Tensor, rounding: Rounding = "truncate") -> torch.Tensor:
    """[-1, 1] floats → uint8 pixels (values outside are clamped); ``rounding`` as in the module docstring."""
    scaled = ((x if x.dtype == torch.float64 else x.float()) + 1) * 127.5  # float32 at least, float64 kept
    if rounding == "round":
        scaled = scaled.round_()
    elif rounding != "truncate":
        raise ValueError(f"rounding must be 'truncate' or 'round', got {rounding!r}")
    return scaled.clamp_(0, 255).to(torch.uint8)


def from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) → float32 in [-1, 1], the DataModules' map ``p/127.5 − 1``."""
    return pixels.float().div_(127.5).sub_(1.0)


def to_unit_interval(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats → [0, 1] floats for display and [0, 1] metrics, clamped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """images: (N, c, H, W) floats in [-1, 1] → one PNG grid (``nrow`` images a row, default √N), clamped."""
    import torchvision

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, int(math.sqrt(len(images))))
    torchvision.utils.save_image(to_unit_interval(images), path, nrow=nrow, padding=2, pad_value=1.0)
    return path
