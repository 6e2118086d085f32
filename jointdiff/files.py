"""Atomic file writes, the one home for them: a reader never sees a half-written file, whatever kills the writer.

Each write goes to a temporary file *in the destination folder* (so the final ``os.replace`` is a rename within one
filesystem, atomic on POSIX), is flushed and fsynced, then renamed over the destination, and the folder is fsynced
so the rename itself survives a crash. ``tempfile.mkstemp()`` in the system temp folder followed by a move (what
fsspec's local transaction and so Lightning's checkpoint saving do) is not atomic when ``$TMPDIR`` is another
filesystem (tmpfs on many clusters): the move becomes a copy that a kill can interrupt.

A writer killed mid-write leaves only its ``.<name, "_" as "-">.*.partial`` file; the next write of the same
destination removes such leftovers.

This module imports nothing from the package: every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

PARTIAL_SUFFIX = ".partial"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _partial_prefix(path: Path) -> str:
    # underscores dropped: Lightning takes any file name containing "hpc_ckpt_" for an HPC checkpoint and reads the
    # digits of the rest of the name as its number, so a temporary file must never contain it
    return "." + path.name.replace("_", "-") + "."


def remove_partials(path: Path) -> list[Path]:
    """Delete the leftovers of earlier writes of ``path`` killed before their rename; returns what was removed."""
    path = Path(path)
    removed = []
    for leftover in path.parent.glob(f"{_partial_prefix(path)}*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(OSError):
            leftover.unlink()
            removed.append(leftover)
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_open(p) as f: f.write(...)``: ``p`` holds either its old content or all of the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_partials(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_partial_prefix(path), suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> None:
    """``write(f)`` into a temporary file beside ``path``, then rename it over ``path`` (module docstring)."""
    with atomic_open(path, mode) as f:
        write(f)


def atomic_write_json(data: dict, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=True), mode="w")


CACHE_ENV = "JOINTDIFF_CACHE"


def cache_dir() -> Path:
    """Writable cache (decompressed files, split files, real features): ``$JOINTDIFF_CACHE`` or
    ``~/.cache/jointdiff``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jointdiff")
