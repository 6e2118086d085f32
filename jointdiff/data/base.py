"""Shared DataModule machinery: data-root resolution, in-memory image datasets, seeded splits, loaders.

Every DataModule exposes ``image_size``, ``channels``, ``num_classes`` and ``task``; the CLI links them into the
model. Images are served as float tensors in [-1, 1] (the reference's normalisation, mean 0.5 / std 0.5).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

DATA_ROOT_ENV = "JOINTDIFF_DATA_ROOT"
CACHE_ENV = "JOINTDIFF_CACHE"


class DatasetNotFoundError(FileNotFoundError):
    """Raised when no source provides a dataset; the message says what is expected and how to get it."""


def cache_dir() -> Path:
    """Writable cache (decompressed files, split files): ``$JOINTDIFF_CACHE`` or ``~/.cache/jointdiff``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jointdiff")


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


class ImageTensorDataset(Dataset):
    """A whole split held in memory as uint8 (N, c, H, W) with its targets; serves [-1, 1] float batches.

    ``__getitems__`` lets the DataLoader fetch a batch with one indexing op instead of B Python calls.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, c, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def to_float(images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(127.5).sub_(1.0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_float(self.images[i]), self.targets[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.to_float(self.images[idx]), self.targets[idx]


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


class ImageDataModule(L.LightningDataModule):
    """Base of every DataModule: subclasses fill ``self.train_set``, ``self.val_set`` and ``self.test_set``
    (``ImageTensorDataset`` or any map-style dataset yielding ``(x, y)``) in ``setup``.

    Validation policy (so no reported number selects on the test split): ``val_fraction`` of the training split is
    held out with a fixed seed, as the reference does without ``eval_on_test_set``; the official test split is
    only used by ``test``.
    """

    name: str = "dataset"
    image_size: int
    channels: int
    num_classes: int
    task: str = "multiclass"

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        download: bool = True,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        split_indices(1, val_fraction, 0)  # validates the fraction before any data is read
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.download = download
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not provided this split")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,  # the reference cycles shuffled batches with drop_last=True
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
