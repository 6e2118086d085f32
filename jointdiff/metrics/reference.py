"""Features of the real (reference) images, computed once and cached on disk.

The cache key holds everything that determines the features: dataset name, split, a fingerprint of the split's
contents (so a changed ``image_size``, ``val_fraction`` or ``split_seed`` never reuses stale features), the
extractor and its weights' fingerprint, the input convention, the number of images and the subset seed. A file is
used only if the key stored inside it equals the requested one; anything else is recomputed.

Batches are assigned to processes round-robin (global batch ``b`` → rank ``b mod W``), the same scheme the
generative evaluation uses for samples, so any number of processes computes the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate

from jointdiff.cache import cache_dir
from jointdiff.files import atomic_write
from jointdiff.trust import load_torch_file


@dataclass(frozen=True)
class ReferenceKey:
    dataset: str
    split: str
    data_fingerprint: str
    extractor: str  # extractor name
    extractor_fingerprint: str
    convention: str
    count: int
    subset_seed: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def filename(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{self.dataset}-{self.split}-{self.extractor}")
        return f"{safe}-{self.convention}-n{self.count}-{self.digest()}.pt"


def dataset_fingerprint(dataset: Dataset) -> str:
    """SHA-256 of the split's contents: the whole uint8 image tensor and targets for in-memory datasets, else
    the length and the first and last examples (weaker: documented in docs/evaluation.md)."""
    h = hashlib.sha256()
    images = getattr(dataset, "images", None)
    targets = getattr(dataset, "targets", None)
    if isinstance(images, torch.Tensor) and isinstance(targets, torch.Tensor):
        h.update(str((tuple(images.shape), str(images.dtype))).encode())
        h.update(images.contiguous().numpy().tobytes())
        h.update(targets.contiguous().numpy().tobytes())
    else:
        n = len(dataset)
        h.update(str(n).encode())
        for i in {0, n - 1}:
            x, _ = dataset[i]
            h.update(torch.as_tensor(x).float().numpy().tobytes())
    return h.hexdigest()[:16]


def reference_key(dataset_name: str, split: str, dataset: Dataset, extractor, convention: str, count: int,
                  subset_seed: int = 0) -> ReferenceKey:
    """The cache key of ``count`` real images of ``dataset`` in ``extractor``'s features under ``convention``."""
    return ReferenceKey(
        dataset=dataset_name, split=split, data_fingerprint=dataset_fingerprint(dataset), extractor=extractor.name,
        extractor_fingerprint=extractor.fingerprint, convention=convention, count=count, subset_seed=subset_seed,
    )


def real_indices(n_total: int, num_reference: int | None, convention: str, loader_batch: int | None,
                 subset_seed: int = 0) -> torch.Tensor:
    """The real images an evaluation compares against: all or a seeded subset; under the ``reference`` convention
    without the last incomplete batch of the reference's evaluation loader (``loader_batch``, docs/fidelity.md)."""
    indices = reference_indices(n_total, num_reference, subset_seed)
    if convention == "reference":
        if loader_batch is None:
            raise ValueError("the reference input convention needs the DataModule's batch_size")
        indices = drop_incomplete_batch(indices, loader_batch)
    return indices


def cached_reference_features(
    dataset: Dataset, dataset_name: str, split: str, extractor, convention: str, batch_size: int,
    cache: ReferenceCache, device: torch.device | str = "cpu", num_reference: int | None = None,
    loader_batch: int | None = None, progress: Callable | None = None,
) -> tuple[torch.Tensor, ReferenceKey, str]:
    """One process: (N_ref, D) real features from the cache (``disk``) or ``computed`` and cached."""
    indices = real_indices(len(dataset), num_reference, convention, loader_batch)
    key = reference_key(dataset_name, split, dataset, extractor, convention, len(indices))
    cached = cache.load(key)
    if cached is not None:
        return cached, key, "disk"
    features = extract_reference_features(dataset, indices, lambda x: extractor(x.to(device), convention),
                                          batch_size, progress=progress).cpu()
    cache.save(key, features)
    return features, key, "computed"


def reference_indices(n_total: int, count: int | None, seed: int) -> torch.Tensor:
    """All indices, or a seeded random subset of ``count`` (sorted)."""
    if count is None or count >= n_total:
        return torch.arange(n_total)
    if count < 1:
        raise ValueError(f"num_reference must be >= 1, got {count}")
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return perm[:count].sort().values


def drop_incomplete_batch(indices: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The first ``⌊N/B⌋·B`` of ``indices``: the images a ``drop_last=True`` loader of batch ``B`` yields. The
    reference's real set for FID is its evaluation loader's (docs/fidelity.md, item 6): 9,984 of 10k at B=128."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return indices[: len(indices) // batch_size * batch_size]


def fetch_images(dataset: Dataset, indices: Sequence[int]) -> torch.Tensor:
    """(B, c, H, W) images of ``dataset`` at ``indices`` (batched ``__getitems__`` when the dataset has it)."""
    if hasattr(dataset, "__getitems__"):
        batch = dataset.__getitems__(list(indices))
    else:
        batch = default_collate([dataset[i] for i in indices])
    return batch[0]


def global_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[(start, stop)] of consecutive batches covering ``range(n)``."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def rank_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """Indices of the global batches process ``rank`` handles: ``b ≡ rank (mod world_size)``."""
    return list(range(rank, len(global_batches(n, batch_size)), world_size))


def assemble(gathered: torch.Tensor, n: int, batch_size: int, world_size: int) -> torch.Tensor:
    """Rows in global order from ``gathered`` (W, n_max, D): every rank's rows of its batches, padded to n_max."""
    rows = []
    for b, (start, stop) in enumerate(global_batches(n, batch_size)):
        r, j = b % world_size, b // world_size
        rows.append(gathered[r, j * batch_size: j * batch_size + (stop - start)])
    return torch.cat(rows)


class ReferenceCache:
    """``<dir>/<key.filename()>`` files holding ``{"key": asdict(key), "features": (N, D) float32}``."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else cache_dir() / "reference_features"

    def path(self, key: ReferenceKey) -> Path:
        return self.directory / key.filename()

    def load(self, key: ReferenceKey) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = load_torch_file(path, "feature cache entry")
        except Exception:
            return None  # a truncated, foreign or refused file: recompute and overwrite
        if data.get("key") != asdict(key):
            return None
        features = data.get("features")
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != key.count:
            return None
        return features

    def save(self, key: ReferenceKey, features: torch.Tensor) -> Path:
        path = self.path(key)
        record = {"key": asdict(key), "features": features.detach().cpu().float().contiguous()}
        atomic_write(path, lambda f: torch.save(record, f))  # a killed run never leaves a half-written entry
        return path


def extract_reference_features(
    dataset: Dataset,
    indices: torch.Tensor,
    featurize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable | None = None,
) -> torch.Tensor:
    """This rank's rows: features of ``dataset[indices]`` for the batches ``rank_batches`` assigns it, in order."""
    batches = global_batches(len(indices), batch_size)
    mine = rank_batches(len(indices), batch_size, rank, world_size)
    it = progress(mine) if progress is not None else mine
    out = [featurize(fetch_images(dataset, indices[batches[b][0]:batches[b][1]].tolist())) for b in it]
    return torch.cat(out) if out else torch.empty(0)
