"""USPS handwritten digits: libsvm ``usps.bz2`` / ``usps.t.bz2``, parsed by torchvision's ``USPS`` reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision

from jointdiff.data.base import ImageDataModule, ImageTensorDataset, Splits, cache_dir
from jointdiff.data.images import resize_square

USPS_FILES = ("usps.bz2", "usps.t.bz2")


class USPSDataModule(ImageDataModule):
    """USPS: 7,291 train / 2,007 test, 16×16 gray, 10 classes (labels 1..10 in the file, 0..9 here).

    Resized bilinearly to ``image_size`` (default 28, the reference's size for MNIST↔USPS adaptation; 16 keeps
    the native images). ``channels=3`` repeats the gray channel.
    """

    name = "USPS"
    env_subdir = "usps"
    num_classes = 10

    def __init__(self, image_size: int = 28, channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        if image_size < 8:
            raise ValueError(f"USPS image_size must be >= 8, got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"USPS channels must be 1 or 3, got {channels}")
        self.image_size = image_size
        self.channels = channels

    @staticmethod
    def _find(root: Path) -> Path | None:
        return root if all((root / f).is_file() for f in USPS_FILES) else None

    @staticmethod
    def _download(target: Path) -> None:
        for train in (True, False):
            torchvision.datasets.USPS(str(target), train=train, download=True)

    def _load_split(self, root: Path, train: bool) -> ImageTensorDataset:
        path = root / USPS_FILES[0 if train else 1]
        try:
            ds = torchvision.datasets.USPS(str(root), train=train, download=False)
        except Exception as err:
            raise ValueError(f"could not parse the USPS file {path} (libsvm text, bzip2): {err!r}") from err
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).unsqueeze(1)  # (N, 1, 16, 16) uint8
        images = resize_square(images, self.image_size).expand(-1, self.channels, -1, -1).contiguous()
        return ImageTensorDataset(images, torch.as_tensor(ds.targets, dtype=torch.long))

    def load_splits(self) -> Splits:
        root = self.resolve(
            self._find,
            "the two libsvm files " + " and ".join(USPS_FILES),
            self._download,
            f"let torchvision download them (--data.download true, needs internet) into {cache_dir() / 'download'}",
        )
        return Splits(self._load_split(root, train=True), None, self._load_split(root, train=False))
