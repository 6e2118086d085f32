"""The one image-range module: both float → uint8 maps against numpy, the uint8 round trip, and the grid writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from jointdiff.images import from_uint8, save_grid, to_uint8, to_unit_interval


def test_uint8_maps_against_numpy():
    x = torch.linspace(-1.2, 1.2, 997)  # float32, the samples' dtype
    scaled = np.clip((x.numpy() + np.float32(1)) * np.float32(127.5), 0, 255)
    assert to_uint8(x).numpy().tolist() == np.trunc(scaled).astype(np.uint8).tolist()
    assert to_uint8(x, rounding="round").numpy().tolist() == np.round(scaled).astype(np.uint8).tolist()
    with pytest.raises(ValueError, match="rounding"):
        to_uint8(x, rounding="floor")


def test_every_uint8_value_maps_back_to_itself():
    pixels = torch.arange(256, dtype=torch.uint8)
    x = from_uint8(pixels)
    assert x.dtype == torch.float32 and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(to_uint8(x, rounding="round"), pixels)
    assert torch.allclose(to_unit_interval(x), pixels.float() / 255, atol=1e-6)


def test_save_grid_writes_the_clamped_images(tmp_path):
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).view(5, 1, 1, 1).expand(5, 1, 2, 2)
    path = save_grid(x, tmp_path / "sub" / "grid.png", nrow=5)
    png = np.asarray(Image.open(path).convert("L"))
    assert png.shape == (2 + 4, 2 + 5 * 4)  # padding 2 around 2×2 tiles
    tiles = [int(png[2, 2 + 4 * k]) for k in range(5)]
    assert tiles == [0, 0, 128, 255, 255]  # clamped to [0, 1], torchvision's round(255·v)
