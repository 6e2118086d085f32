"""Atomic file writes, the one home for them: a reader never sees a half-written file, whatever kills the writer.

Each write goes to a temporary file *in the destination folder* (so the final ``os.replace`` is a rename within one
filesystem, atomic on POSIX), is flushed and fsynced, then renamed over the destination, and the folder is fsynced
so the rename itself survives a crash. ``tempfile.mkstemp()`` in the system temp folder followed by a move (what
fsspec's local transaction and so Lightning's checkpoint saving do) is not atomic when ``$TMPDIR`` is another
filesystem (tmpfs on many clusters): the move becomes a copy that a kill can interrupt.

A writer killed mid-write leaves only its ``.<name, "_" as "-">.<host>-<pid>.*.partial`` file; the next write of
the same destination removes such leftovers of *dead* writers of this host. A file of a live writer, or of another
host (a shared filesystem: its process cannot be asked), is never touched, so two processes may write one
destination at once (the last rename wins, each file whole).

This module imports nothing from the package: every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
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


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _writer_prefix(path: Path) -> str:
    return f"{_partial_prefix(path)}{_host()}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_partials(path: Path) -> list[Path]:
    """Delete the leftovers of earlier writes of ``path`` whose writer, on this host, is dead (module docstring);
    returns what was removed."""
    path = Path(path)
    pattern = re.compile(re.escape(_partial_prefix(path) + _host()) + r"-(\d+)\.")
    removed = []
    for leftover in path.parent.glob(f"{_partial_prefix(path)}*{PARTIAL_SUFFIX}"):
        found = pattern.match(leftover.name)
        if found is None or _alive(int(found.group(1))):
            continue
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_writer_prefix(path), suffix=PARTIAL_SUFFIX)
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


def strict_json(value):
    """``value`` with every NaN and ±inf float replaced by ``None``: JSON has no such numbers (Python writes bare
    ``NaN`` tokens that other readers reject)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def atomic_write_json(data: dict, path: str | os.PathLike) -> None:
    """``data`` as strict JSON (non-finite numbers as ``null``: :func:`strict_json`), written atomically."""
    text = json.dumps(strict_json(data), indent=2, sort_keys=True, allow_nan=False)
    atomic_write(path, lambda f: f.write(text), mode="w")
