"""Fashion-MNIST (and the idx-format loader MNIST shares)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from jointdiff.data.base import (
    DATA_ROOT_ENV,
    DatasetNotFoundError,
    ImageDataModule,
    ImageTensorDataset,
    cache_dir,
    candidate_roots,
    split_indices,
)

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _find_idx_folder(root: Path, tv_name: str) -> Path | None:
    """A folder holding the four idx files (``.gz`` or not), flat or in torchvision's ``<Name>/raw`` layout."""
    for folder in (root, root / tv_name / "raw"):
        if all((folder / f).exists() or (folder / f"{f}.gz").exists() for f in IDX_FILES):
            return folder
    return None


def _torchvision_layout(folder: Path, tv_name: str) -> Path:
    """A root that torchvision's parser reads: ``folder`` itself if it is ``<root>/<Name>/raw`` with uncompressed
    files, else a cache copy with the ``.gz`` files decompressed (data roots may be read-only)."""
    if folder.name == "raw" and folder.parent.name == tv_name and all((folder / f).exists() for f in IDX_FILES):
        return folder.parent.parent
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    root = cache_dir() / "idx" / key
    raw = root / tv_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        if (raw / f).exists():
            continue
        tmp = raw / f"{f}.partial"
        if (folder / f).exists():
            shutil.copyfile(folder / f, tmp)
        else:
            with gzip.open(folder / f"{f}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        tmp.replace(raw / f)  # atomic: a killed run never leaves a truncated file behind
    return root


class IdxDataModule(ImageDataModule):
    """Base for datasets in the idx (``*-idx?-ubyte[.gz]``) format, parsed by torchvision's own reader.

    Looks for the data in, in order: ``root`` (if given, only there), ``$JOINTDIFF_DATA_ROOT/<env_subdir>``, the
    system folders, then a torchvision download into the cache. ``image_size=32`` pads the 28×28 images with
    background (−1) to 32×32 (decision D3: the paper's grayscale feature size 1856 assumes 32 px).
    """

    tv_class: type[torchvision.datasets.MNIST] = torchvision.datasets.MNIST
    env_subdir: str = "mnist"
    system_dirs: tuple[str, ...] = ()
    channels = 1
    num_classes = 10

    def __init__(self, image_size: int = 28, **kwargs):
        super().__init__(**kwargs)
        if image_size not in (28, 32):
            raise ValueError(f"{self.name} image_size must be 28 (native) or 32 (padded), got {image_size}")
        self.image_size = image_size

    @property
    def tv_name(self) -> str:
        return self.tv_class.__name__

    def _missing_message(self, tried: list[Path], download_error: Exception | None) -> str:
        files = ", ".join(f"{f}.gz" for f in IDX_FILES)
        lines = [
            f"{self.name} not found. Expected the four idx files ({files}) in a folder.",
            "Looked in: " + (", ".join(str(p) for p in tried) or "(no folder configured)"),
            "Provide them in one of three ways:",
            f"  1. --data.root /path/to/folder (the files themselves, or torchvision's {self.tv_name}/raw layout);",
            f"  2. export {DATA_ROOT_ENV}=/path/to/datasets with the files in <that>/{self.env_subdir}/"
            + (f" (or install them system-wide into {', '.join(self.system_dirs)})" if self.system_dirs else "")
            + ";",
            f"  3. let torchvision download them (--data.download true, needs internet) into {cache_dir() / 'download'}.",
        ]
        if download_error is not None:
            lines.append(f"The download was tried and failed: {type(download_error).__name__}: {download_error}")
        return "\n".join(lines)

    def _locate(self) -> Path:
        """Root for ``tv_class(root, download=False)``; raises :class:`DatasetNotFoundError` with instructions."""
        roots = candidate_roots(self.root, self.env_subdir, self.system_dirs)
        for root in roots:
            folder = _find_idx_folder(root, self.tv_name)
            if folder is not None:
                return _torchvision_layout(folder, self.tv_name)
        download_error = None
        if self.download and self.root is None:
            target = cache_dir() / "download"
            try:
                self.tv_class(str(target), train=True, download=True)
                return target
            except Exception as err:  # network errors take many forms; report whichever happened
                download_error = err
        raise DatasetNotFoundError(self._missing_message(roots, download_error))

    def _load_split(self, root: Path, train: bool) -> ImageTensorDataset:
        try:
            ds = self.tv_class(str(root), train=train, download=False)
        except Exception as err:
            raise ValueError(f"could not parse the {self.name} idx files under {root}: {err!r}") from err
        images = ds.data.unsqueeze(1)  # (N, 1, 28, 28) uint8
        if self.image_size == 32:
            images = F.pad(images, (2, 2, 2, 2), value=0)  # uint8 0 ↦ −1 after scaling: background
        return ImageTensorDataset(images.contiguous(), ds.targets.long())

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        root = self._locate()
        full_train = self._load_split(root, train=True)
        keep, held = split_indices(len(full_train), self.val_fraction, self.split_seed)
        self.train_set = ImageTensorDataset(full_train.images[keep], full_train.targets[keep])
        self.val_set = ImageTensorDataset(full_train.images[held], full_train.targets[held]) if len(held) else None
        self.test_set = self._load_split(root, train=False)

    def val_dataloader(self):
        if self.val_set is None:
            return []  # val_fraction=0: no validation loop (never silently validate on the test split)
        return super().val_dataloader()


class FashionMNISTDataModule(IdxDataModule):
    """Fashion-MNIST: 60k train / 10k test, 28×28 gray, 10 classes."""

    name = "Fashion-MNIST"
    tv_class = torchvision.datasets.FashionMNIST
    env_subdir = "fashion-mnist"
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
