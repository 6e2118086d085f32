"""Datasets in the idx format (``*-idx?-ubyte[.gz]``): Fashion-MNIST and MNIST, parsed by torchvision's reader."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import torch.nn.functional as F
import torchvision

from jointdiff.cache import build_entry, cache_dir, cache_lock, inside_cache, remove_cache_entry
from jointdiff.data.base import ImageDataModule, ImageTensorDataset, Splits
from jointdiff.data.images import resize_square

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


def _source(folder: Path, name: str) -> Path:
    """The file that provides ``name``: the uncompressed one if present, else its ``.gz``."""
    return folder / name if (folder / name).exists() else folder / f"{name}.gz"


def check_idx_bytes(data: bytes, source: Path, length: int | None = None) -> None:
    """Reject an idx payload whose header does not describe its length (empty, truncated or not idx at all),
    naming ``source``. Header: two zero bytes, a type code (0x08: uint8), the number of dimensions, then each
    dimension as a big-endian uint32; the payload holds their product in bytes. ``data`` may be just the header
    when ``length`` gives the payload's full length."""
    length = len(data) if length is None else length
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise ValueError(f"{source} is not a uint8 idx file ({length} bytes after decompression); "
                         "replace it with the dataset's original file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(dims)
    if len(data) < 4 + 4 * ndim or length != expected:
        raise ValueError(f"{source}: its header announces shape {tuple(dims)} ({expected} bytes) but it holds "
                         f"{length} bytes; replace it with the dataset's original file")


def _cache_entry(folder: Path) -> tuple[Path, Path]:
    """(folder of every cache entry of ``folder``, this entry): entries are keyed on the folder *and* on each
    source file's name, size and modification time, so replacing a file builds a new entry."""
    identity = []
    for f in IDX_FILES:
        source = _source(folder, f)
        st = source.stat()
        identity.append([source.name, st.st_size, st.st_mtime_ns])
    parent = cache_dir() / "idx" / hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    return parent, parent / hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:12]


def _torchvision_layout(folder: Path, tv_name: str) -> Path:
    """A root that torchvision's parser reads: ``folder``'s grandparent if ``folder`` is ``<root>/<Name>/raw`` with
    uncompressed files (after checking each file, :func:`check_idx_bytes`), else a cache copy with the ``.gz``
    files decompressed (data roots may be read-only).

    The copy is checked before it is cached, built under a lock in a temporary folder and renamed into place complete
    (:func:`jointdiff.cache.build_entry`), and keyed on the source files' identity (:func:`_cache_entry`). Entries
    of older versions of the same folder's files are removed under the same lock. Every error names the source
    file, never the cache, and nothing outside the cache is ever deleted."""
    if folder.name == "raw" and folder.parent.name == tv_name and all((folder / f).exists() for f in IDX_FILES):
        for f in IDX_FILES:  # torchvision's reader would fail on a truncated file with a bare traceback
            with open(folder / f, "rb") as handle:
                check_idx_bytes(handle.read(4 + 4 * 4), folder / f, (folder / f).stat().st_size)
        return folder.parent.parent
    parent, root = _cache_entry(folder)

    def build(tmp: Path) -> None:
        raw = tmp / tv_name / "raw"
        raw.mkdir(parents=True)
        for f in IDX_FILES:
            source = _source(folder, f)
            try:
                data = source.read_bytes() if source.suffix != ".gz" else gzip.decompress(source.read_bytes())
            except (OSError, EOFError, gzip.BadGzipFile) as err:  # a truncated or non-gzip file
                raise ValueError(f"could not decompress {source}: {err!r}; replace it with the original file") from err
            check_idx_bytes(data, source)
            (raw / f).write_bytes(data)
        for old in parent.iterdir():  # entries built from earlier versions of these files (never a build, a lock)
            if old != root and old.is_dir() and not old.name.startswith("."):
                with cache_lock(old):
                    remove_cache_entry(old)

    return build_entry(root, build, lambda entry: all((entry / tv_name / "raw" / f).is_file() for f in IDX_FILES))


class IdxDataModule(ImageDataModule):
    """Base for datasets in the idx (``*-idx?-ubyte[.gz]``) format, parsed by torchvision's own reader.

    Looks for the data in, in order: ``root`` (if given, only there), ``$JOINTDIFF_DATA_ROOT/<env_subdir>``, the
    system folders, then a torchvision download into the cache.

    ``image_size=32`` enlarges the 28×28 images: ``upscale="pad"`` adds a background (−1) border (decision D3:
    the paper's grayscale feature size 1856 assumes 32 px); ``upscale="resize"`` resizes bilinearly, as the
    reference's ``MNIST32`` (the SVHN→MNIST target). ``channels=3`` repeats the gray channel (``MNIST32`` again).
    """

    tv_class: type[torchvision.datasets.MNIST] = torchvision.datasets.MNIST
    env_subdir: str = "mnist"
    num_classes = 10

    def __init__(
        self,
        image_size: int = 28,
        channels: int = 1,
        upscale: Literal["pad", "resize"] = "pad",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if image_size not in (28, 32):
            raise ValueError(f"{self.name} image_size must be 28 (native) or 32 (padded or resized), got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"{self.name} channels must be 1 (gray) or 3 (gray repeated), got {channels}")
        if upscale not in ("pad", "resize"):
            raise ValueError(f"upscale must be 'pad' or 'resize', got {upscale!r}")
        self.image_size = image_size
        self.channels = channels
        self.upscale = upscale

    @property
    def tv_name(self) -> str:
        return self.tv_class.__name__

    def _expected(self) -> str:
        return "the four idx files (" + ", ".join(f"{f}.gz" for f in IDX_FILES) + ")"

    def _download_hint(self) -> str:
        return f"let torchvision download them (--data.download true, needs internet) into {cache_dir() / 'download'}"

    def _find(self, root: Path) -> Path | None:
        folder = _find_idx_folder(root, self.tv_name)
        if folder is None:
            return None
        self._source_folder = folder
        return _torchvision_layout(folder, self.tv_name)

    def _download(self, target: Path) -> None:
        self.tv_class(str(target), train=True, download=True)

    def _locate(self) -> Path:
        """Root for ``tv_class(root, download=False)``; raises :class:`DatasetNotFoundError` with instructions."""
        return self.resolve(
            self._find, self._expected(), self._download, self._download_hint(),
            layout_hint=f"torchvision's {self.tv_name}/raw layout",
        )

    def _load_split(self, root: Path, train: bool) -> ImageTensorDataset:
        try:
            ds = self.tv_class(str(root), train=train, download=False)
        except Exception as err:
            source = getattr(self, "_source_folder", root)
            if inside_cache(root):  # never keep a cache entry that failed to parse; the user's folder is never touched
                with cache_lock(root):
                    remove_cache_entry(root)
            raise ValueError(f"could not parse the {self.name} idx files in {source}: {err!r}") from err
        images = ds.data.unsqueeze(1)  # (N, 1, 28, 28) uint8
        if self.image_size == 32:
            if self.upscale == "pad":
                images = F.pad(images, (2, 2, 2, 2), value=0)  # uint8 0 ↦ −1 after scaling: background
            else:
                images = resize_square(images, 32)
        if self.channels == 3:
            images = images.expand(-1, 3, -1, -1)
        return ImageTensorDataset(images.contiguous(), ds.targets.long())

    def load_splits(self) -> Splits:
        root = self._locate()
        return Splits(self._load_split(root, train=True), None, self._load_split(root, train=False))

