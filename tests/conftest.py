"""Shared fixtures and helpers: real Fashion-MNIST from ``$JOINTDIFF_DATA_ROOT``, tiny models, data and checkpoints,
independent reference computations, and the derived ``slow`` marker."""

import ast
import inspect
import os
import re
import socket
import subprocess
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import scipy.linalg
import torch
import yaml
from scipy.spatial.distance import cdist

from jointdiff.callbacks import GenerativeEvaluation
from jointdiff.data.base import ImageDataModule, ImageTensorDataset, Splits
from jointdiff.models import JointDiffusion
from jointdiff.nn.joint import JointNetwork
from jointdiff.nn.unet import UNet

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


# --- shared helpers: tiny models, data, checkpoints and independent references used by several test files --------
# tiny JointDiffusion settings: the evaluation tests' model (16 px, a head) and the sampler tests' (8 px, noisy head)
TINY_JOINT = dict(
    image_size=16, channels=1, num_classes=3, model_channels=16, channel_mult=[1, 2], norm_groups=8,
    num_res_blocks=1, attention_downsample=[], diffusion_steps=50, classifier_weight=0.1, ema_decay=0.9,
)
TINY_SAMPLER = dict(image_size=8, channels=1, num_classes=3, model_channels=16, channel_mult=[1, 2], num_res_blocks=1,
                    attention_downsample=[], num_heads=2, dropout=0.0, norm_groups=8, diffusion_steps=30,
                    noisy_classifier="replace")
N_TEST = 61  # odd, and not a multiple of the eval batch: a padding DistributedSampler would repeat one example
N_CLASSES = 3
DEMO_CONFIG = "configs/demo.yaml"
# a `jointdiff fit` of the paper's F-MNIST composition shrunk to seconds (SLURM and signal tests)
TINY_FIT_ARGS = [
    "--config", "configs/base/default.yaml", "--config", "configs/paper/data/fashion_mnist.yaml",
    "--config", "configs/paper/models/joint.yaml", "--config", "configs/base/cpu_quick.yaml",
    "--config", "configs/base/tiny_unet.yaml",
    "--model.init_args.model_channels=16", "--model.init_args.norm_groups=8", "--model.init_args.diffusion_steps=50",
    "--data.init_args.batch_size=8", "--trainer.limit_val_batches=0", "--test_after_fit=false",
    "--trainer.log_every_n_steps=1", "--trainer.logger.init_args.flush_logs_every_n_steps=1",
]


class SyntheticDataModule(ImageDataModule):
    """Random 16×16 gray images with 3 random classes, in memory (the evaluation code only needs the splits)."""

    name = "synthetic"
    image_size = 16
    channels = 1
    num_classes = 3
    task = "multiclass"

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        g = torch.Generator().manual_seed(0)

        def split(n: int) -> ImageTensorDataset:
            images = torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8)
            return ImageTensorDataset(images, torch.randint(0, 3, (n,), generator=g))

        self.train_set, self.val_set, self.test_set = split(48), split(8), split(N_TEST)


class QuadrantData(ImageDataModule):
    """8×8 grey images on a noisy background; class k brightens quadrant k. ``sizes``: (train, val, test)."""

    name = "tiny"
    image_size, channels, num_classes, task = 8, 1, 4, "multiclass"
    sizes = (64, 32, 32)

    def load_splits(self) -> Splits:
        g = torch.Generator().manual_seed(0)

        def make(n):
            y = torch.randint(0, 4, (n,), generator=g)
            x = torch.randint(0, 60, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
            for k in range(4):
                r, c = divmod(k, 2)
                x[y == k, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 190
            return ImageTensorDataset(x, y)

        return Splits(*map(make, self.sizes))


def quiet_trainer(tmp_path, **kw) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, **kw)


def make_tiny_checkpoint(path: Path) -> Path:
    """A tiny JointDiffusion with a head, trained two steps by Lightning and saved as a checkpoint (reused when
    it already exists: the evaluation test files share one per pytest session)."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=str(path.parent), num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(JointDiffusion(**TINY_JOINT), SyntheticDataModule(batch_size=8, eval_batch_size=8))
    trainer.save_checkpoint(path)
    torch.set_num_threads(threads)
    return path


def write_checkpoint(path, **overrides) -> JointDiffusion:
    """A checkpoint as ``jointdiff fit`` writes it (state dict, hyper-parameters, class record)."""
    torch.manual_seed(0)
    model = JointDiffusion(**{**TINY_SAMPLER, **overrides})
    torch.nn.init.normal_(model.network.unet.out[-1].weight, std=0.05)  # zero-initialised otherwise
    model.ema.module.load_state_dict(model.network.state_dict())
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return model


def evaluation_callback(ckpt: str, cache_dir: str, **kwargs) -> GenerativeEvaluation:
    settings = dict(
        # 36 samples = 5 global batches: 3 on rank 0, 2 on rank 1, the last one short
        num_samples=36, batch_size=8, feature_extractors=[f"clf=classifier:{ckpt}"],
        input_conventions=["standard", "reference"], prd_clusters=5, prd_runs=1, knn_chunk_size=16,
        grid_size=16, cache_dir=cache_dir,
    )
    settings.update(kwargs)
    return GenerativeEvaluation(**settings)


def tiny_joint(num_outputs: int | None = N_CLASSES, seed: int = 0) -> JointNetwork:
    """A tiny joint network with non-trivial weights everywhere (the UNet's output conv is zero-initialised and
    fresh BatchNorm statistics are the identity; both would hide mistakes)."""
    torch.manual_seed(seed)
    net = JointNetwork(UNet(8, 1, 16, (1, 2), 1, [], 2, 0.0, 8), num_outputs, head_dropout=0.5)
    torch.nn.init.normal_(net.unet.out[-1].weight, std=0.05)
    if net.head is not None:
        for m in net.head.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean[-1] = 5.0  # the step-index feature
                m.running_var[-1] = 30.0
    return net.eval()


def tiny_joint64() -> JointNetwork:
    net = tiny_joint().double()
    # the sinusoidal step embedding is float32 by design; feed the float64 copy's time MLP in its own dtype
    net.unet.time_embed.register_forward_pre_hook(lambda mod, args: (args[0].double(),))
    return net


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (zero-initialised outputs would hide differences)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def tiny_overrides(tmp_path: Path, **model) -> Path:
    """A config layered on the demo's (``DEMO_CONFIG``) that shrinks everything to seconds on CPU."""
    cfg = {
        "trainer": {
            "max_steps": 3,
            "val_check_interval": 3,
            "limit_val_batches": 2,
            "limit_test_batches": 2,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
                {"class_path": "jointdiff.callbacks.SampleGrid", "init_args": {"num_samples": 4}},
                {"class_path": "jointdiff.callbacks.MetricsJSON"},
            ],
        },
        "model": {"init_args": {**TINY_MODEL, **model}},
        "data": {"init_args": {"batch_size": 8, "eval_batch_size": 32}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's formula: scipy matrix square root (independent of the eigenvalue route we use)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def knn_scipy(fake: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    r_real = np.sort(cdist(real, real), axis=1)[:, k]
    r_fake = np.sort(cdist(fake, fake), axis=1)[:, k]
    d = cdist(fake, real)
    return float((d <= r_real[None, :]).any(1).mean()), float((d <= r_fake[:, None]).any(0).mean())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            output, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, output[-4000:]


# --- the `slow` marker -------------------------------------------------------------------------------------------
# A test is slow when it starts a Trainer, the CLI or a subprocess: directly, through a helper function of its
# module or of this file, or through a fixture. The marker is derived from the source at collection (so a new test
# is marked without anyone remembering to), and `pytest -m "not slow"` is the inner loop; `make test` runs everything.
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
    """Whether ``func`` (or a helper of its module or of this file that it calls, or a fixture it takes) starts a
    Trainer/CLI/subprocess."""
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
        if inspect.isfunction(helper) and helper.__module__ in (func.__module__, __name__):  # or a helper here
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
