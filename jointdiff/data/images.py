"""Image files (a folder or a zip) decoded into uint8 tensors, resized, and cached as memory-mapped arrays.

Used by the datasets distributed as individual image files (CelebA's JPEGs, MALARIA's PNGs). Decoding is
torchvision's (libpng/libjpeg), resizing is ``torchvision.transforms.v2.functional`` (bilinear, antialiased);
decoding runs in DataLoader workers. The decoded array is written once to ``cache_dir()/decoded`` (keyed by
the source, its size/mtime and the preprocessing) and memory-mapped on later runs, so a 200k-image dataset is
decoded once, not at every start.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from tqdm.auto import tqdm

from jointdiff.cache import cache_lock
from jointdiff.files import atomic_write_json


def resize_square(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """(N, c, h, w) uint8 → (N, c, size, size) uint8, bilinear with antialiasing (aspect ratio not kept)."""
    if images.shape[-2:] == (size, size):
        return images
    parts = [TF.resize(images[i : i + chunk], [size, size], antialias=True) for i in range(0, len(images), chunk)]
    return torch.cat(parts)


def resize_center_crop(image: torch.Tensor, size: int, pre_crop: int | None = None) -> torch.Tensor:
    """(c, h, w) uint8 → (c, size, size): optional centre square crop of ``pre_crop`` px first, then resize the
    shorter side to ``size`` and centre-crop (torchvision ``Resize(size)`` + ``CenterCrop(size)``, as the reference
    does for CelebA and, through guided-diffusion's ``center_crop_arr``, for MALARIA)."""
    if pre_crop is not None:
        image = TF.center_crop(image, [pre_crop, pre_crop])
    if min(image.shape[-2:]) != size:
        image = TF.resize(image, [size], antialias=True)
    return TF.center_crop(image, [size, size])


def reference_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion's ``center_crop_arr``, as the reference loads MALARIA (docs/fidelity.md): halve with PIL's BOX
    filter while the shorter side is at least ``2·size``, resize with BICUBIC so the shorter side is ``size`` (each
    side ``round(side·scale)``), then crop the centre square (offsets rounded down). (H, W, 3) uint8."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


Resampling = Literal["torchvision", "reference"]


class ImageFiles(Dataset):
    """Image files as uint8 (3, size, size) tensors: ``files`` are paths under ``folder`` or members of ``zip_path``.

    ``resampling``: ``torchvision`` (decode with torchvision, antialiased bilinear resize of the shorter side, centre
    crop: :func:`resize_center_crop`) or ``reference`` (decode with PIL, guided-diffusion's ``center_crop_arr``:
    :func:`reference_center_crop`; ``pre_crop`` is not supported there). A zip is opened lazily in each worker
    process (a file handle shared across fork would interleave seeks).
    """

    def __init__(
        self,
        files: Sequence[str],
        size: int,
        folder: Path | None = None,
        zip_path: Path | None = None,
        pre_crop: int | None = None,
        resampling: Resampling = "torchvision",
    ):
        if (folder is None) == (zip_path is None):
            raise ValueError("give exactly one of folder and zip_path")
        if resampling not in ("torchvision", "reference") or (resampling == "reference" and pre_crop is not None):
            raise ValueError(f"resampling must be torchvision|reference (reference: no pre_crop), got {resampling!r}")
        self.resampling = resampling
        self.files = list(files)
        self.size = size
        self.folder = folder
        self.zip_path = zip_path
        self.pre_crop = pre_crop
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, name: str) -> bytes:
        if self.zip_path is None:
            return (self.folder / name).read_bytes()
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip, self._zip_pid = zipfile.ZipFile(self.zip_path), os.getpid()
        return self._zip.read(name)

    def __getitem__(self, i: int) -> torch.Tensor:
        name = self.files[i]
        where = f"{self.zip_path}:{name}" if self.zip_path else str(self.folder / name)
        try:
            if self.resampling == "reference":
                with Image.open(io.BytesIO(self._read(name))) as pil:
                    array = reference_center_crop(pil.convert("RGB"), self.size)
                return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
            data = torch.frombuffer(bytearray(self._read(name)), dtype=torch.uint8)
            image = decode_image(data, mode=ImageReadMode.RGB)
        except Exception as err:
            raise ValueError(f"could not decode image {where}: {err}") from err
        return resize_center_crop(image, self.size, self.pre_crop)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"] = state["_zip_pid"] = None
        return state


def decode_into(files: ImageFiles, out: np.ndarray, num_workers: int = 0, desc: str = "decoding") -> None:
    """Fill ``out`` (N, 3, size, size) uint8 with the decoded images, in order, with a progress bar."""
    loader = DataLoader(files, batch_size=256, num_workers=num_workers, collate_fn=torch.stack)
    pos = 0
    with tqdm(total=len(files), desc=desc, unit="img", disable=None) as bar:
        for batch in loader:
            out[pos : pos + len(batch)] = batch.numpy()
            pos += len(batch)
            bar.update(len(batch))


def source_fingerprint(paths: Sequence[Path]) -> list:
    """Resolved path, size and mtime of each source file: changes when the data is replaced. A folder counts
    its files, their total size and their latest mtime (a folder's own mtime misses a file replaced in place)."""
    out = []
    for p in paths:
        if p.is_dir():
            stats = [f.stat() for f in p.rglob("*") if f.is_file()]
            out.append([str(p.resolve()), len(stats), sum(st.st_size for st in stats),
                        max((st.st_mtime_ns for st in stats), default=0)])
        else:
            st = p.stat()
            out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def cached_decode(
    cache_folder: Path, key: dict, files: ImageFiles, num_workers: int = 0, desc: str = "decoding"
) -> torch.Tensor:
    """uint8 (N, 3, S, S) images of ``files``, decoded once into ``cache_folder/<hash of key>.npy`` and then
    memory-mapped (copy-on-write, so the tensor is writable without touching the file)."""
    key = {**key, "files": hashlib.sha1("\n".join(files.files).encode()).hexdigest(), "size": files.size,
           "pre_crop": files.pre_crop, "format": 1}
    if files.resampling != "torchvision":  # (absent for the default, so that existing caches stay valid)
        key["resampling"] = files.resampling
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_folder / f"{digest}.npy"
    shape = (len(files), 3, files.size, files.size)
    def cached() -> torch.Tensor | None:
        if not path.exists():
            return None
        try:
            array = np.load(path, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError):  # a truncated or foreign file: decode again
            return None
        return torch.from_numpy(array) if array.shape == shape and array.dtype == np.uint8 else None

    if (found := cached()) is not None:
        return found
    with cache_lock(path):  # one process decodes; the others wait and read its file
        if (found := cached()) is not None:
            return found
        cache_folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.partial")
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:
            decode_into(files, array, num_workers, desc)
            array.flush()
            del array
            os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache behind
        finally:
            tmp.unlink(missing_ok=True)
        atomic_write_json(key, cache_folder / f"{digest}.json")
    return torch.from_numpy(np.load(path, mmap_mode="c", allow_pickle=False))
