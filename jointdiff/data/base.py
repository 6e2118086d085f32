"""Shared DataModule machinery: data-root resolution, in-memory image datasets, seeded splits, loaders.

Every DataModule exposes ``image_size``, ``channels``, ``num_classes`` and ``task``; the CLI links them into the
model. Images are served as float tensors in [-1, 1] (the reference's normalisation, mean 0.5 / std 0.5).

A subclass only says where its files are and how to parse them (:meth:`ImageDataModule.load_splits`); this base
holds out the validation part of the training split, checks shapes and labels against the declared
``image_size/channels/num_classes``, and hides labels for semi-supervised training (docs/design.md §7).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from jointdiff.cache import CACHE_ENV, cache_dir  # noqa: F401  (cache_dir: re-exported for the DataModules)
from jointdiff.data.semisupervised import (
    IMAGES_STREAM,
    LABELLED_STREAM,
    UNLABELLED,
    hide_labels,
    select_labelled,
    validate_labelled_args,
)
from jointdiff.images import from_uint8

# torchdata 0.11 calls torch.set_vital on every iterator, which torch ≥ 2.9 deprecates with a warning each epoch
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)

DATA_ROOT_ENV = "JOINTDIFF_DATA_ROOT"

T = TypeVar("T")


class DatasetNotFoundError(FileNotFoundError):
    """Raised when no source provides a dataset; the message says what is expected and how to get it."""


def candidate_roots(explicit: str | os.PathLike | None, env_subdir: str, system_dirs: Sequence[str] = ()) -> list[Path]:
    """Where to look, in order: the explicit root alone if given, else ``$JOINTDIFF_DATA_ROOT/<env_subdir>``,
    then system-wide installs (e.g. Debian's ``/usr/share/datasets/...``)."""
    if explicit is not None:
        return [Path(explicit).expanduser()]
    roots = []
    if os.environ.get(DATA_ROOT_ENV):
        roots.append(Path(os.environ[DATA_ROOT_ENV]).expanduser() / env_subdir)
    roots += [Path(d) for d in system_dirs]
    return roots


def missing_data_message(
    name: str,
    expected: str,
    tried: Sequence[Path],
    env_subdir: str,
    download_hint: str,
    layout_hint: str | None = None,
    system_dirs: Sequence[str] = (),
    download_error: Exception | None = None,
) -> str:
    """The one wording of every "dataset not found" error: what is expected, where we looked, three ways out."""
    lines = [
        f"{name} not found. Expected {expected} in a folder.",
        "Looked in: " + (", ".join(str(p) for p in tried) or "(no folder configured)"),
        "Provide them in one of three ways:",
        "  1. --data.root /path/to/folder (the files themselves"
        + (f", or {layout_hint}" if layout_hint else "")
        + ");",
        f"  2. export {DATA_ROOT_ENV}=/path/to/datasets with the files in <that>/{env_subdir}/"
        + (f" (or install them system-wide into {', '.join(system_dirs)})" if system_dirs else "")
        + ";",
        f"  3. {download_hint}.",
    ]
    if download_error is not None:
        lines.append(f"The download was tried and failed: {type(download_error).__name__}: {download_error}")
    return "\n".join(lines)


class ImageTensorDataset(Dataset):
    """A whole split held in memory as uint8 (N, c, H, W) with its targets; serves [-1, 1] float batches.

    ``images`` may be backed by a memory-mapped cache file (large datasets such as CelebA). ``targets`` are
    (N,) class ids or (N, n) 0/1 attributes; −1 marks an unlabelled example (the whole row for multi-label).
    ``__getitems__`` lets the DataLoader fetch a batch with one indexing op instead of B Python calls.

    ``random_flip``: every fetch flips each image horizontally with probability ½ (guided-diffusion's
    ``ImageDataset(random_flip=True)``, which the reference uses for MALARIA in every split). The draws come from
    torch's global generator, which ``seed_everything`` and Lightning's per-worker seeding make reproducible (the
    reference's Python ``random`` is never seeded).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, random_flip: bool = False):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, c, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def to_float(images: torch.Tensor) -> torch.Tensor:
        return from_uint8(images)

    def _flip(self, images: torch.Tensor) -> torch.Tensor:
        """(B, c, H, W) uint8 → each image mirrored left-right with probability ½ (when ``random_flip``)."""
        if not self.random_flip:
            return images
        flip = (torch.rand(images.shape[0]) < 0.5).reshape(-1, 1, 1, 1)
        return torch.where(flip, images.flip(-1), images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._flip(self.images[i : i + 1])[0] if self.random_flip else self.images[i]
        return self.to_float(image), self.targets[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.to_float(self._flip(self.images[idx])), self.targets[idx]

    def subset(self, indices: torch.Tensor) -> ImageTensorDataset:
        return ImageTensorDataset(self.images[indices], self.targets[indices], self.random_flip)


def collate_batch(batch):
    """Identity for batches already stacked by ``__getitems__``; default collation otherwise."""
    if isinstance(batch, tuple) and isinstance(batch[0], torch.Tensor):
        return batch
    return torch.utils.data.default_collate(batch)


def split_indices(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into (kept, held-out) with ``round(holdout·n)`` held out."""
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_out = round(holdout * n)
    return perm[n_out:].sort().values, perm[:n_out].sort().values


@dataclass
class Splits:
    """What a DataModule's parser returns. ``val=None``: hold out ``val_fraction`` of ``train`` (the default
    policy); a dataset with an official validation partition (CelebA) or its own split (MALARIA) sets it."""

    train: ImageTensorDataset
    val: ImageTensorDataset | None
    test: ImageTensorDataset


class ImageDataModule(L.LightningDataModule):
    """Base of every DataModule: subclasses implement :meth:`load_splits` (parse the files into uint8 tensors).

    Validation policy (so no reported number selects on the test split): ``val_fraction`` of the training split
    is held out with a fixed seed, as the reference does without ``eval_on_test_set``; the official test split
    is only used by ``test``. Per-dataset exceptions are in ``docs/data.md``.

    Semi-supervised training (docs/design.md §7, decision D17): ``labelled_fraction`` (in (0, 1]) or
    ``labelled_per_class`` keeps the labels of a seeded subset of the training part (after the validation
    hold-out); every other training example stays in with label −1 (``UNLABELLED``). ``class_balanced`` draws
    the same number from every class; the default is a uniform draw, as the reference (which leaves it unseeded).
    Validation and test keep all their labels.

    ``semi_supervised_mode`` says how the labelled images reach the classifier term:

    - ``buffer`` (the reference, docs/design.md §7): one shuffled stream of all training images; the labelled ones of
      each batch are collected until a full classifier batch is there (at 1% labels: about once per 100 steps).
    - ``stream`` (the semi-supervised literature's standard): a second, labelled stream, its own shuffled loader
      over the labelled subset (cycled), beside the stream of all images; every training batch is then
      ``{"images": (x, y), "labelled": (x_l, y_l)}`` with a full labelled batch of ``batch_size`` every step
      (Lightning's combined loaders, ``max_size_cycle``: an epoch is one pass over all images).
    """

    name: str = "dataset"
    image_size: int
    channels: int
    num_classes: int
    task: str = "multiclass"
    env_subdir: str = "dataset"
    system_dirs: tuple[str, ...] = ()

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        download: bool = True,
        labelled_fraction: float | None = None,
        labelled_per_class: int | None = None,
        labelled_seed: int = 0,
        class_balanced: bool = False,
        semi_supervised_mode: Literal["buffer", "stream"] = "buffer",
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        split_indices(1, val_fraction, 0)  # validates the fraction before any data is read
        validate_labelled_args(labelled_fraction, labelled_per_class)
        if class_balanced and labelled_fraction is None and labelled_per_class is None:
            raise ValueError("class_balanced selects which labels to keep: it needs labelled_fraction")
        if semi_supervised_mode not in ("buffer", "stream"):
            raise ValueError(f"semi_supervised_mode must be buffer|stream, got {semi_supervised_mode!r}")
        if semi_supervised_mode == "stream" and labelled_fraction is None and labelled_per_class is None:
            raise ValueError("semi_supervised_mode=stream adds a labelled stream to semi-supervised data: "
                             "it needs labelled_fraction or labelled_per_class")
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.download = download
        self.labelled_fraction = labelled_fraction
        self.labelled_per_class = labelled_per_class
        self.labelled_seed = labelled_seed
        self.class_balanced = class_balanced
        self.semi_supervised_mode = semi_supervised_mode
        self.labelled_indices: torch.Tensor | None = None  # into train_set, when semi-supervised
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._prepared: Splits | None = None  # parsed by prepare_data(), handed to setup()

    @property
    def semi_supervised(self) -> bool:
        return self.labelled_fraction is not None or self.labelled_per_class is not None

    # data location ---------------------------------------------------------------------------------------------
    def resolve(
        self,
        find: Callable[[Path], T | None],
        expected: str,
        download: Callable[[Path], None] | None,
        download_hint: str,
        layout_hint: str | None = None,
    ) -> T:
        """First hit of ``find`` over :func:`candidate_roots`; else, when allowed, ``download(into)`` then
        ``find(into)``; else :class:`DatasetNotFoundError` in the shared wording."""
        roots = candidate_roots(self.root, self.env_subdir, self.system_dirs)
        for root in roots:
            found = find(root)
            if found is not None:
                return found
        download_error = None
        if self.download and self.root is None and download is not None:
            target = cache_dir() / "download"
            try:
                download(target)
                found = find(target)
                if found is not None:
                    return found
                roots.append(target)
            except Exception as err:  # network errors take many forms; report whichever happened
                download_error = err
        raise DatasetNotFoundError(
            missing_data_message(
                self.name, expected, roots, self.env_subdir, download_hint, layout_hint, self.system_dirs,
                download_error,
            )
        )

    # parsing (subclasses) --------------------------------------------------------------------------------------
    def load_splits(self) -> Splits:
        """Parse the dataset into uint8 tensors at ``(channels, image_size, image_size)``."""
        raise NotImplementedError

    # checks ----------------------------------------------------------------------------------------------------
    def check_split(self, ds: ImageTensorDataset, split: str, allow_unlabelled: bool = False) -> None:
        """Reject images or labels that do not match what this DataModule declares (and links into the model)."""
        shape = (self.channels, self.image_size, self.image_size)
        if tuple(ds.images.shape[1:]) != shape:
            raise ValueError(f"{self.name} {split} images are {tuple(ds.images.shape[1:])}, expected {shape}")
        y = ds.targets
        if len(y) == 0:
            raise ValueError(f"{self.name} {split} split is empty")
        if self.task == "multilabel":
            if y.ndim != 2 or y.shape[1] != self.num_classes:
                raise ValueError(f"{self.name} {split} targets are {tuple(y.shape)}, expected (N, {self.num_classes})")
            ok = (y == 0) | (y == 1)
            if allow_unlabelled:  # an unlabelled example is a whole row of −1
                ok |= (y == UNLABELLED).all(dim=1, keepdim=True)
            if not bool(ok.all()):
                raise ValueError(f"{self.name} {split} multi-label targets must be 0/1")
            return
        if y.ndim != 1:
            raise ValueError(f"{self.name} {split} targets are {tuple(y.shape)}, expected (N,) class ids")
        labelled = y[y != UNLABELLED] if allow_unlabelled else y
        if len(labelled) and (int(labelled.min()) < 0 or int(labelled.max()) >= self.num_classes):
            raise ValueError(
                f"{self.name} {split} labels span {int(labelled.min())}..{int(labelled.max())}, "
                f"but the dataset declares num_classes={self.num_classes} (labels must be in 0..{self.num_classes - 1})"
            )

    # setup -----------------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Find, download, decompress and decode the files (filling the caches) once per node: Lightning calls
        this on one process per node before every process's :meth:`setup`, which then reads the caches instead of
        downloading or decoding the same files in every process at once. The parsed splits are kept for this
        process's own ``setup``."""
        parses = type(self).load_splits is not ImageDataModule.load_splits  # (test doubles override setup instead)
        if self.train_set is None and self._prepared is None and parses:
            self._prepared = self.load_splits()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits, self._prepared = self._prepared or self.load_splits(), None
        train, val = splits.train, splits.val
        if val is None and self.val_fraction > 0:
            keep, held = split_indices(len(train), self.val_fraction, self.split_seed)
            train, val = train.subset(keep), train.subset(held)
        self.check_split(train, "train", allow_unlabelled=True)
        if val is not None:
            self.check_split(val, "val")
        self.check_split(splits.test, "test")
        if self.semi_supervised:
            train = self._hide_labels(train)
        self.train_set, self.val_set, self.test_set = train, val, splits.test

    def _hide_labels(self, train: ImageTensorDataset) -> ImageTensorDataset:
        idx = select_labelled(
            train.targets, self.num_classes, self.labelled_fraction, self.labelled_per_class, self.labelled_seed,
            self.class_balanced,
        )
        self.labelled_indices = idx
        targets = hide_labels(train.targets, idx)
        how = "class-balanced" if self.class_balanced or self.labelled_per_class is not None else "uniform"
        msg = (f"{self.name}: {len(idx)} of {len(targets)} training images keep their labels "
               f"({how}, seed {self.labelled_seed})")
        if self.task == "multiclass":
            msg += "; per class " + str(torch.bincount(targets[idx], minlength=self.num_classes).tolist())
        rank_zero_info(msg)
        return ImageTensorDataset(train.images, targets)

    # loaders ---------------------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset | None, train: bool, seed_offset: int = 0) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not provided this split")
        # Under DDP, Lightning's injected DistributedSampler pads the ranks with repeated
        # examples, which biases val/test accuracy; an unpadded sampler (ranks may differ by one example) keeps the
        # single-process value exactly. Lightning leaves a DistributedSampler subclass in place.
        sampler = None
        if not train and torch.distributed.is_available() and torch.distributed.is_initialized():
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        # Training: torchdata's StatefulDataLoader, whose position and shuffling state Lightning saves in every
        # checkpoint and restores, so a run resumed in the middle of an epoch sees the batches the uninterrupted run
        # would have seen (a plain DataLoader restarts the epoch with a new permutation).
        loader_class = StatefulDataLoader if train else DataLoader
        loader = loader_class(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=sampler,
            generator=self._shuffle_generator(seed_offset) if train else self._eval_generator(),
            drop_last=train,  # the reference cycles shuffled batches with drop_last=True
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_batch,
        )
        if train:
            loader.generator = self._shuffle_generator(seed_offset + 1)  # see _shuffle_generator
        return loader

    @staticmethod
    def _shuffle_generator(offset: int) -> torch.Generator:
        """Generators of the training loader, seeded from the run's seed. The shuffling sampler keeps the first
        (``offset=0``); its state is in every checkpoint. Each epoch's iterator also draws a seed for its workers
        from ``loader.generator``, *after* the sampler recorded its state: that draw comes from a second generator
        (``offset=1``), so that it neither advances the restored shuffling state nor, as with the default
        ``generator=None``, torch's global generator, whose restored state must reach the first step after a resume
        untouched."""
        return torch.Generator().manual_seed(torch.initial_seed() + offset)

    @staticmethod
    def _eval_generator() -> torch.Generator:
        """The generator of a validation or test loader. Those loaders do not shuffle, but each of their iterators
        still draws a seed for its workers from ``loader.generator``; with the default ``generator=None`` that draw
        comes from torch's global generator, so every validation run would shift the training noise, timesteps and
        next epoch's order after it, and a run's model would depend on its validation cadence. A generator of its
        own keeps training the same whatever is evaluated along the way (``tests/test_data.py``)."""
        return torch.Generator().manual_seed(torch.initial_seed() + 4)

    def train_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        images = self._loader(self.train_set, train=True)
        if self.semi_supervised_mode == "buffer":
            return images
        labelled = self.train_set.subset(self.labelled_indices)
        if len(labelled) < self.batch_size:
            raise ValueError(f"{len(labelled)} labelled training images cannot fill one labelled batch of "
                             f"{self.batch_size} (drop_last); lower batch_size or keep more labels")
        # its own generators (offsets 2, 3), so the labelled order neither depends on nor shifts the images' order
        return {IMAGES_STREAM: images, LABELLED_STREAM: self._loader(labelled, train=True, seed_offset=2)}

    def val_dataloader(self):
        if self.val_set is None:
            return []  # val_fraction=0: no validation loop (never silently validate on the test split)
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
