"""The sample file: what ``jointdiff sample``, ``alpha-sweep`` and the generative evaluation write, and what
``jointdiff score`` reads (also files of other implementations, in other layouts).

Written: ``.npz`` with ``arr_0`` uint8 (N, H, W, c), as guided-diffusion's scripts write, and ``arr_1`` the requested
targets ((N,) class ids or (N, n) 0/1 vectors) when there are any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from jointdiff.images import from_uint8, to_uint8

Layout = Literal["auto", "NHWC", "NCHW"]
ValueRange = Literal["auto", "uint8", "0,1", "-1,1"]
IMAGE_KEYS = ("arr_0", "images", "samples", "x")
TARGET_KEYS = ("arr_1", "labels", "targets", "y")


def write_samples(path: Path, images: torch.Tensor, targets: torch.Tensor | None = None) -> Path:
    """The sample file every command writes and ``jointdiff score`` reads: ``arr_0`` uint8 (N, H, W, c), as
    guided-diffusion's scripts write, and ``arr_1`` the requested targets when there are any. Written atomically.
    ``images``: (N, c, H, W) floats in [-1, 1] (stored with :func:`to_uint8`, the reference's truncation) or
    uint8 already quantised."""
    from jointdiff.files import atomic_open

    pixels = images if images.dtype == torch.uint8 else to_uint8(images)
    arrays = {"arr_0": pixels.permute(0, 2, 3, 1).cpu().numpy()}
    if targets is not None:
        arrays["arr_1"] = targets.cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def read_samples(path: str | Path, layout: Layout = "auto", value_range: ValueRange = "auto",
                 ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """``(images (N, c, H, W) float in [-1, 1], targets or None, how it was read)`` from a sample file.

    Accepts ``.npz`` (images under ``arr_0``/``images``/``samples``/``x``, targets under ``arr_1``/``labels``/
    ``targets``/``y``), ``.npy`` (images only) and ``.pt`` (a tensor or a dict with those keys). Images are
    (N, H, W) gray, (N, H, W, c) or (N, c, H, W) with c ∈ {1, 3}; ``layout`` settles a shape that could be either.
    Values: uint8 (0…255), floats in [0, 1] or in [-1, 1]; ``value_range`` settles floats that could be either.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample file not found: {path}")
    arrays = _load_arrays(path)
    image_key = next((k for k in IMAGE_KEYS if k in arrays), None)
    if image_key is None:
        raise ValueError(f"{path} holds {sorted(arrays)}; expected the images under one of {list(IMAGE_KEYS)}")
    x = _numeric_tensor(arrays[image_key], path, image_key)
    if len(x) == 0:
        raise ValueError(f"{path}: '{image_key}' holds no images (shape {tuple(x.shape)})")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum()) if x.ndim > 1 else int((~torch.isfinite(x)).sum())
        raise ValueError(f"{path}: {bad} of {len(x)} images hold NaN or infinite values; a sampler that diverged "
                         "wrote them: score a file of finite images")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{path}: images must be (N, H, W), (N, H, W, c) or (N, c, H, W), got {tuple(x.shape)}")
    nhwc, nchw = x.shape[-1] in (1, 3), x.shape[1] in (1, 3)
    if layout == "auto":
        if nhwc == nchw:
            raise ValueError(f"{path}: cannot tell the channel axis of shape {tuple(x.shape)}; pass --layout NHWC "
                             "or --layout NCHW")
        layout = "NHWC" if nhwc else "NCHW"
    if layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    x, value_range = _to_unit_range(x, value_range, path)
    targets_key = next((k for k in TARGET_KEYS if k in arrays), None)
    targets = None if targets_key is None else _numeric_tensor(arrays[targets_key], path, targets_key)
    if targets is not None and len(targets) != len(x):
        raise ValueError(f"{path}: {len(x)} images but {len(targets)} targets")
    info = {"path": str(path), "images_key": image_key, "targets_key": targets_key, "layout": layout,
            "value_range": value_range, "shape": list(x.shape)}
    return x.contiguous(), targets, info


def _numeric_tensor(value, path: Path, key: str) -> torch.Tensor:
    """``value`` as a tensor, or one line saying why it is not an array of numbers (object arrays, strings…)."""
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: '{key}' is an array of {array.dtype} ({array.dtype.kind!r}), not of numbers: "
                         "store the images as uint8 or floats")
    return torch.as_tensor(array)


def _load_arrays(path: Path) -> dict:
    """The file's arrays: for ``.npz`` a lazy mapping (only the image and target arrays are ever read), loaded
    without pickles; ``.pt`` through the trust rule (:mod:`jointdiff.trust`)."""
    from jointdiff.trust import UntrustedFileError, load_torch_file

    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                images, targets = (next((k for k in keys if k in data.files), None)
                                   for keys in (IMAGE_KEYS, TARGET_KEYS))
                if images is None:
                    return dict.fromkeys(data.files)  # (names only, for the error message)
                return {k: data[k] for k in (images, targets) if k is not None}
        if path.suffix == ".npy":
            return {"arr_0": np.load(path, allow_pickle=False)}
        if path.suffix == ".pt":
            data = load_torch_file(path, "sample file")
            return data if isinstance(data, dict) else {"arr_0": data}
    except UntrustedFileError:
        raise
    except Exception as err:  # truncated, not an array file, an object array (needs pickles)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a readable {path.suffix} sample file ({type(err).__name__}: {first[:160]}): "
                         "pass a file written by `jointdiff sample` or numpy.savez") from err
    raise ValueError(f"{path}: unknown sample file type {path.suffix!r} (use .npz, .npy or .pt)")


def _to_unit_range(x: torch.Tensor, value_range: ValueRange, path: Path) -> tuple[torch.Tensor, str]:
    if x.dtype == torch.uint8:
        if value_range not in ("auto", "uint8"):
            raise ValueError(f"{path}: the images are uint8, not floats in [{value_range}]")
        return from_uint8(x), "uint8"
    if not x.is_floating_point():
        raise ValueError(f"{path}: images must be uint8 or floats, got {x.dtype}")
    x = x.float()
    low, high = float(x.min()), float(x.max())
    if value_range == "auto":
        if low < 0:
            value_range = "-1,1"
        elif high > 1:
            raise ValueError(f"{path}: float images in [{low:g}, {high:g}] are neither in [0, 1] nor [-1, 1]")
        else:
            raise ValueError(f"{path}: float images in [{low:g}, {high:g}] could be in [0, 1] or [-1, 1]; pass "
                             "--value_range 0,1 or --value_range -1,1")
    lo, hi = (0.0, 1.0) if value_range == "0,1" else (-1.0, 1.0)
    if low < lo - 1e-3 or high > hi + 1e-3:
        raise ValueError(f"{path}: images span [{low:g}, {high:g}], outside --value_range {value_range}")
    return (x * 2 - 1 if value_range == "0,1" else x), value_range
