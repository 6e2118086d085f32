"""CelebA (aligned and cropped faces) with its 40 binary attributes and the official partitions.

Files, as distributed (torchvision's ``celeba/`` folder): ``img_align_celeba/*.jpg`` (178×218),
``list_attr_celeba.txt`` (count line, 40 names, then ``<file> ±1 ×40``) and ``list_eval_partition.txt``
(``<file> 0|1|2`` for train/valid/test). The two text files are parsed here because torchvision's ``CelebA``
insists on the published MD5 of every annotation file (and also needs identity, bbox and landmark files that
this model does not use). Images are decoded once into a memory-mapped cache (:mod:`jointdiff.data.images`).

Decision D20: the official train/valid/test partitions are used (valid = validation, test = test), and no
random flip is frozen into the cache (the reference's flip is a one-off random choice).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from jointdiff.data.base import ImageDataModule, ImageTensorDataset, Splits, cache_dir
from jointdiff.data.images import ImageFiles, cached_decode, source_fingerprint

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
PARTITIONS = {"train": 0, "valid": 1, "test": 2}
NUM_ATTRIBUTES = 40


def read_attributes(path: Path) -> tuple[list[str], list[str], torch.Tensor]:
    """``list_attr_celeba.txt`` → (attribute names, file names, (N, n_attr) long 0/1 attributes)."""
    try:
        lines = path.read_text().splitlines()
        count, names = int(lines[0].strip()), lines[1].split()
        files, rows = [], []
        for i, line in enumerate(lines[2:], start=3):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(names) + 1:
                raise ValueError(f"line {i} has {len(parts) - 1} values for {len(names)} attributes")
            files.append(parts[0])
            rows.append([int(v) for v in parts[1:]])
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        raise ValueError(f"could not parse the CelebA attribute file {path}: {err}") from err
    if count != len(files):
        raise ValueError(f"{path} announces {count} images but lists {len(files)}")
    attrs = torch.tensor(rows, dtype=torch.long).reshape(len(files), len(names))
    if not bool(((attrs == 1) | (attrs == -1)).all()):
        raise ValueError(f"{path}: attribute values must be -1 or 1")
    return names, files, (attrs + 1) // 2


def read_partition(path: Path) -> dict[str, int]:
    """``list_eval_partition.txt`` → {file name: 0 train | 1 valid | 2 test}."""
    try:
        out = {}
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            name, part = parts
            out[name] = int(part)
            if out[name] not in (0, 1, 2):
                raise ValueError(f"line {i}: partition {part} is not 0, 1 or 2")
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"could not parse the CelebA partition file {path}: {err}") from err
    return out


class CelebADataModule(ImageDataModule):
    """CelebA: 162,770 train / 19,867 valid / 19,962 test, served at ``image_size`` (default 64) × 3.

    Preprocessing (configurable): ``center_crop`` (px, optional) crops a centre square of the 178×218 original
    first; then the shorter side is resized to ``image_size`` and the centre square kept (the reference's
    ``Resize(64)`` + ``CenterCrop(64)`` when ``center_crop`` is None).

    Targets: ``attributes=None`` gives all 40 attributes as a multi-label target (``task="multilabel"``, docs/design.md
    §4.3); a list of names gives that subset, still multi-label; a single name (a string) gives a binary
    two-class task (``task="multiclass"``, ``num_classes=2``).

    Validation is the official ``valid`` partition, so there is no ``val_fraction``; ``test`` is the official test
    partition. Semi-supervised options act on the train partition (multi-label targets: fraction only).
    """

    name = "CelebA"
    env_subdir = "celeba"
    channels = 3

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 64,
        center_crop: int | None = None,
        attributes: str | list[str] | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        download: bool = True,
        labelled_fraction: float | None = None,
        labelled_per_class: int | None = None,
        labelled_seed: int = 0,
        class_balanced: bool = False,
    ):
        super().__init__(
            root, batch_size, eval_batch_size, num_workers, 0.0, 0, download, labelled_fraction,
            labelled_per_class, labelled_seed, class_balanced,
        )
        if image_size < 8:
            raise ValueError(f"CelebA image_size must be >= 8, got {image_size}")
        if center_crop is not None and not image_size <= center_crop <= 178:
            raise ValueError(f"center_crop must be in [image_size, 178] px, got {center_crop}")
        if isinstance(attributes, list | tuple) and (not attributes or len(set(attributes)) != len(attributes)):
            raise ValueError(f"attributes must be a non-empty list of distinct names, got {attributes}")
        self.image_size = image_size
        self.center_crop = center_crop
        self.attributes = attributes
        if attributes is None:
            self.num_classes, self.task = NUM_ATTRIBUTES, "multilabel"
        elif isinstance(attributes, str):
            self.num_classes, self.task = 2, "multiclass"
        else:
            self.num_classes, self.task = len(attributes), "multilabel"
        self.attribute_names: list[str] | None = None  # after setup: the names of the target columns

    @staticmethod
    def _find(root: Path) -> Path | None:
        for folder in (root, root / "celeba"):
            if (folder / ATTR_FILE).is_file() and (folder / PARTITION_FILE).is_file() and (folder / IMAGE_DIR).is_dir():
                return folder
        return None

    @staticmethod
    def _download(target: Path) -> None:
        torchvision.datasets.CelebA(str(target), split="all", download=True)

    def _targets(self, names: list[str], attrs: torch.Tensor) -> torch.Tensor:
        wanted = [self.attributes] if isinstance(self.attributes, str) else self.attributes or names
        unknown = [a for a in wanted if a not in names]
        if unknown:
            raise ValueError(f"unknown CelebA attribute(s) {unknown}; the file has: {', '.join(names)}")
        self.attribute_names = list(wanted)
        cols = attrs[:, [names.index(a) for a in wanted]]
        return cols[:, 0] if isinstance(self.attributes, str) else cols

    def load_splits(self) -> Splits:
        folder = self.resolve(
            self._find,
            f"{IMAGE_DIR}/ with the aligned JPEGs, {ATTR_FILE} and {PARTITION_FILE}",
            self._download,
            f"let torchvision download them from Google Drive (--data.download true, needs internet) into "
            f"{cache_dir() / 'download'}",
            layout_hint="torchvision's celeba/ layout",
        )
        names, files, attrs = read_attributes(folder / ATTR_FILE)
        partition = read_partition(folder / PARTITION_FILE)
        missing = [f for f in files if f not in partition]
        if missing:
            raise ValueError(
                f"{len(missing)} images of {ATTR_FILE} have no partition in {PARTITION_FILE}, e.g. {missing[:3]}"
            )
        targets = self._targets(names, attrs)
        key = {"source": source_fingerprint([folder / ATTR_FILE, folder / PARTITION_FILE, folder / IMAGE_DIR])}
        splits = {}
        for split, code in PARTITIONS.items():
            idx = [i for i, f in enumerate(files) if partition[f] == code]
            if not idx:
                raise ValueError(f"{PARTITION_FILE} assigns no image to the {split} partition")
            images = cached_decode(
                cache_dir() / "decoded" / "celeba",
                {**key, "partition": split},
                ImageFiles(
                    [files[i] for i in idx], self.image_size, folder=folder / IMAGE_DIR, pre_crop=self.center_crop
                ),
                self.num_workers,
                desc=f"CelebA {split}: decoding to {self.image_size}px (once; cached)",
            )
            splits[split] = ImageTensorDataset(images, targets[idx])
        return Splits(splits["train"], splits["valid"], splits["test"])
