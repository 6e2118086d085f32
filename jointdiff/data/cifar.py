"""CIFAR-10 and CIFAR-100 from the "python version" pickles (``cifar-10-batches-py/``, ``cifar-100-python/``).

The pickles are read here (as torchvision does, but by an unpickler that builds only containers and arrays:
:func:`jointdiff.trust.load_data_pickle`) rather than through
``torchvision.datasets.CIFAR10``, because that class refuses files whose MD5 differs from the published archive.
A ``.tar.gz`` archive found instead of the folder is extracted into the cache (:func:`jointdiff.cache.build_entry`).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch
import torchvision

from jointdiff.cache import build_entry
from jointdiff.data.base import ImageDataModule, ImageTensorDataset, Splits, cache_dir
from jointdiff.trust import UntrustedFileError, load_data_pickle


def read_cifar_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch → (N, 3, 32, 32) uint8 images and (N,) labels."""
    try:
        entry = load_data_pickle(path)  # containers and arrays only: a pickle can otherwise run code
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except UntrustedFileError:
        raise
    except Exception as err:
        raise ValueError(
            f"could not parse the CIFAR batch {path} (python pickle with 'data' and '{label_key}'): {err!r}"
        ) from err
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


class _CIFARDataModule(ImageDataModule):
    image_size = 32
    channels = 3
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    tv_class: type

    def _find(self, root: Path) -> Path | None:
        for folder in (root / self.folder, root):
            if all((folder / f).is_file() for f in self.train_files + self.test_files):
                return folder
        if (root / self.archive).is_file():
            archive = root / self.archive
            target = cache_dir() / "extracted" / self.env_subdir

            def extract(tmp: Path) -> None:
                # tarfile's "data" filter: no member may land outside the folder, be a device or a link out of it
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")

            complete = lambda entry: all((entry / self.folder / f).is_file()  # noqa: E731
                                         for f in self.train_files + self.test_files)
            return self._find(build_entry(target, extract, complete))
        return None

    def _download(self, target: Path) -> None:
        self.tv_class(str(target), train=True, download=True)

    def _read(self, folder: Path, files: tuple[str, ...]) -> ImageTensorDataset:
        parts = [read_cifar_batch(folder / f, self.label_key) for f in files]
        return ImageTensorDataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

    def load_splits(self) -> Splits:
        folder = self.resolve(
            self._find,
            f"the pickles {', '.join(self.train_files + self.test_files)} (folder {self.folder}/ or {self.archive})",
            self._download,
            f"let torchvision download them (--data.download true, needs internet) into {cache_dir() / 'download'}",
            layout_hint=f"a folder holding {self.folder}/ or {self.archive}",
        )
        return Splits(self._read(folder, self.train_files), None, self._read(folder, self.test_files))


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10: 50k train / 10k test, 32×32×3, 10 classes."""

    name = "CIFAR-10"
    env_subdir = "cifar-10"
    num_classes = 10
    folder = "cifar-10-batches-py"
    archive = "cifar-10-python.tar.gz"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    tv_class = torchvision.datasets.CIFAR10


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100: 50k train / 10k test, 32×32×3, 100 (fine) classes."""

    name = "CIFAR-100"
    env_subdir = "cifar-100"
    num_classes = 100
    folder = "cifar-100-python"
    archive = "cifar-100-python.tar.gz"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    tv_class = torchvision.datasets.CIFAR100
