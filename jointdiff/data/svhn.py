"""SVHN (cropped digits): MATLAB ``train_32x32.mat`` / ``test_32x32.mat``.

Parsed with ``scipy.io.loadmat``, exactly as torchvision's ``SVHN`` does; that class itself is not used for
reading because it insists on the published MD5 of each file (so it could not read a re-saved or partial copy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch
import torchvision

from jointdiff.data.base import ImageDataModule, ImageTensorDataset, Splits, cache_dir

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def read_svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 32, 32) uint8 images and (N,) labels 0..9 (the file's label 10 is the digit 0)."""
    try:
        mat = scipy.io.loadmat(path)
        x, y = mat["X"], mat["y"]
    except Exception as err:
        raise ValueError(f"could not parse the SVHN file {path} (MATLAB .mat with 'X' and 'y'): {err!r}") from err
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8 or y.size != x.shape[3]:
        raise ValueError(
            f"{path}: expected X uint8 (32, 32, 3, N) and y (N, 1), got X {x.dtype} {x.shape}, y {y.shape}"
        )
    labels = y.astype(np.int64).reshape(-1)
    labels[labels == 10] = 0
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))  # (H, W, C, N) → (N, C, H, W)
    return images, torch.from_numpy(labels)


class SVHNDataModule(ImageDataModule):
    """SVHN: 73,257 train / 26,032 test, 32×32×3, 10 classes. The ``extra`` split is not used (docs/design.md §1)."""

    name = "SVHN"
    env_subdir = "svhn"
    image_size = 32
    channels = 3
    num_classes = 10

    @staticmethod
    def _find(root: Path) -> Path | None:
        return root if all((root / f).is_file() for f in SVHN_FILES.values()) else None

    @staticmethod
    def _download(target: Path) -> None:
        for split in SVHN_FILES:
            torchvision.datasets.SVHN(str(target), split=split, download=True)

    def load_splits(self) -> Splits:
        root = self.resolve(
            self._find,
            "the two MATLAB files " + " and ".join(SVHN_FILES.values()),
            self._download,
            f"let torchvision download them (--data.download true, needs internet) into {cache_dir() / 'download'}",
        )
        train = ImageTensorDataset(*read_svhn_mat(root / SVHN_FILES["train"]))
        test = ImageTensorDataset(*read_svhn_mat(root / SVHN_FILES["test"]))
        return Splits(train, None, test)
