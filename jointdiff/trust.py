"""The trust rule: a file someone hands the package is data, never code (docs/design.md, "Trust boundary").

* Checkpoints, weight files and sample files are read with ``torch.load(weights_only=True)``: tensors, numbers,
  strings and containers only. Everything the project itself writes loads that way (no allow-listed types are
  needed today; :data:`SAFE_GLOBALS` is the one place to add one). A file that needs full unpickling, which can run
  arbitrary code, is refused in one line naming the opt-in :data:`TRUST_ENV` for files the user trusts.
* Python pickles that are datasets (CIFAR's ``data_batch_*``) are read by :func:`load_data_pickle`, an unpickler
  that builds only plain containers and NumPy arrays.
* A class named inside a file is built only if it is a ``LightningModule`` of this package (see
  :func:`jointdiff.models.checkpoints.load_model`).

This is the only module that may call ``torch.load(weights_only=False)``, and only under :data:`TRUST_ENV`; a test
of the suite fails if another module of ``jointdiff/`` does.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

TRUST_ENV = "JOINTDIFF_TRUST_PICKLE"

# Types beyond weights_only's own set that the project writes into its files (none today).
SAFE_GLOBALS: list = []


class UntrustedFileError(ValueError):
    """A file that could only be read by running code from it."""


def trusted_by_user() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def _names_code(err: BaseException) -> bool:
    """Whether torch's weights-only unpickler stopped at an object to build (not at bytes that are no pickle)."""
    return isinstance(err, pickle.UnpicklingError) and bool(re.search(r"Unsupported (global|class)|GLOBAL ", str(err)))


def load_torch_file(path: str | Path, what: str = "file", map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``; a file that needs more is refused (module docstring) unless the user
    set :data:`TRUST_ENV`. Other failures (truncated, not a PyTorch file) propagate for the caller to word."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if not _names_code(err):
            raise
        if not trusted_by_user():
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            blocked = f"it calls {found.group(1)}" if found else "it holds pickled objects"
            raise UntrustedFileError(
                f"{path} is a {what} that can only be read by running code stored in it ({blocked}); "
                f"jointdiff reads tensors and plain values only. If you trust this file, set {TRUST_ENV}=1"
            ) from None
    warnings.warn(f"{TRUST_ENV}=1: fully unpickling {path}, which may run code stored in it", stacklevel=2)
    return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)


class _DataUnpickler(pickle.Unpickler):
    """Builds containers, numbers, strings and NumPy arrays only: what a dataset pickle holds."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"), ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not plain data")
        return super().find_class(module, name)


def load_data_pickle(path: str | Path, encoding: str = "latin1") -> Any:
    """A dataset pickle (plain containers and NumPy arrays), refusing anything that would build other objects."""
    data = Path(path).read_bytes()
    try:
        return _DataUnpickler(io.BytesIO(data), encoding=encoding).load()
    except pickle.UnpicklingError as err:
        if "is not plain data" not in str(err):
            raise
        raise UntrustedFileError(f"{path} is not a plain-data pickle ({err}): replace it with the dataset's "
                                 "original file") from None
