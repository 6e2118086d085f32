"""Shared fixtures: real Fashion-MNIST from ``$JOINTDIFF_DATA_ROOT`` and tiny model settings."""

import ast
import inspect
import os
import re
import textwrap
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


# --- the `slow` marker -------------------------------------------------------------------------------------------
# A test is slow when it starts a Trainer, the CLI or a subprocess: directly, through a helper function of its
# module, or through a fixture. The marker is derived from the source at collection (so a new test is marked without
# anyone remembering to), and `pytest -m "not slow"` is the inner loop; `make test` runs everything.
SLOW_CALLS = re.compile(
    r"\b(Trainer|quiet_trainer|console|run_lightning_cli|subprocess|Popen|fit|trainer\.(fit|test|validate)|"
    r"main)\s*\(|\bsubprocess\.|\bmain\(\[|\.fit\("
)


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _is_slow(func, namespace: dict, fixtures: dict, seen: set) -> bool:
    """Whether ``func`` (or a same-module helper it calls, or a fixture it takes) starts a Trainer/CLI/subprocess."""
    if id(func) in seen:
        return False
    seen.add(id(func))
    text = _source(func)
    if SLOW_CALLS.search(text):
        return True
    try:
        tree = ast.parse(textwrap.dedent(text))
    except SyntaxError:
        return False
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    for name in called:
        helper = namespace.get(name)
        if inspect.isfunction(helper) and helper.__module__ == func.__module__:
            if _is_slow(helper, namespace, fixtures, seen):
                return True
    args = inspect.signature(func).parameters if callable(func) else {}
    return any(arg in fixtures and _is_slow(fixtures[arg], namespace, fixtures, seen) for arg in args)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts a Trainer, the CLI or a subprocess (deselect: -m 'not slow')")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        fixtures = {}
        info = getattr(item, "_fixtureinfo", None)
        for name, defs in (info.name2fixturedefs.items() if info else []):
            if defs:
                fixtures[name] = defs[-1].func
        namespace = vars(item.module) if item.module else {}
        if _is_slow(item.function, namespace, fixtures, set()):
            item.add_marker(pytest.mark.slow)
