"""The package's cache folder, and the only place where the package deletes folders.

Entries (decompressed idx files, extracted archives, decoded images, real features) are built in a temporary folder
beside their final place, under a file lock (the ``filelock`` package: works across processes, SLURM array tasks
and nodes sharing ``$JOINTDIFF_CACHE``), and renamed into place complete. A deletion is refused unless the path lies
inside :func:`cache_dir`: nothing derived from a user's data path can ever be removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock

CACHE_ENV = "JOINTDIFF_CACHE"
BUILD_PREFIX = ".build-"


def cache_dir() -> Path:
    """Writable cache (decompressed files, split files, real features): ``$JOINTDIFF_CACHE`` or
    ``~/.cache/jointdiff``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jointdiff")


def inside_cache(path: Path) -> bool:
    root = cache_dir().resolve()
    resolved = Path(path).resolve()
    return resolved != root and root in resolved.parents


def remove_cache_entry(path: Path) -> None:
    """Delete ``path`` (a folder or file of the cache); raises if it is not strictly inside :func:`cache_dir`."""
    path = Path(path)
    if not inside_cache(path):
        raise RuntimeError(f"refusing to delete {path}: it is not inside the jointdiff cache {cache_dir()}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def cache_lock(entry: Path, timeout: float = -1) -> Iterator[None]:
    """Hold the lock of ``entry`` across processes: ``<cache>/locks/<hash of the entry's path>.lock``, kept apart
    so that listing a folder of entries never sees a lock."""
    digest = hashlib.sha1(str(Path(entry).resolve()).encode()).hexdigest()[:16]
    folder = cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{digest}.lock"), timeout=timeout):
        yield


def build_entry(entry: Path, build: Callable[[Path], None], complete: Callable[[Path], bool]) -> Path:
    """``entry`` (a folder inside the cache), built once by ``build(tmp)`` into a temporary folder and renamed into
    place, under :func:`cache_lock`. ``complete(entry)`` says whether an existing entry is usable; an incomplete one
    (from a version that built in place) is removed and rebuilt. Another process finishing first is waited for and
    its entry used, never removed while it may be read."""
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    if complete(entry):
        return entry
    with cache_lock(entry):
        if complete(entry):  # another process built it while we waited
            return entry
        if entry.exists():
            remove_cache_entry(entry)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f"{BUILD_PREFIX}{entry.name}-"))
        try:
            build(tmp)
            tmp.rename(entry)
        finally:
            if tmp.exists():
                remove_cache_entry(tmp)
    return entry
