"""Shared fixtures: real Fashion-MNIST from ``$JOINTDIFF_DATA_ROOT`` and tiny model settings."""

import os
from pathlib import Path

import pytest
import torch

TINY_MODEL = dict(
    model_channels=16,
    norm_groups=8,
    num_res_blocks=1,
    attention_downsample=[],
    diffusion_steps=50,
)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored after it: tiny models and small metric computations run several
    times faster single-threaded than with threads oversubscribing the cores of a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Decompressed data and split files go to a per-session cache, never the user's home."""
    monkeypatch.setenv("JOINTDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "jointdiff-cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("JOINTDIFF_DATA_ROOT")
    if not root or not (Path(root) / "fashion-mnist").is_dir():
        raise RuntimeError(
            "these tests need the real datasets: set JOINTDIFF_DATA_ROOT to the folder holding fashion-mnist/ "
            "(CI sets it to ../shared/data)"
        )
    return Path(root)


@pytest.fixture(scope="session")
def fmnist(data_root, tmp_path_factory):
    """Set-up Fashion-MNIST DataModule (small batches), shared across tests."""
    os.environ.setdefault("JOINTDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "jointdiff-cache"))
    from jointdiff.data import FashionMNISTDataModule

    dm = FashionMNISTDataModule(root=str(data_root / "fashion-mnist"), batch_size=16, eval_batch_size=64)
    dm.setup("fit")
    return dm
