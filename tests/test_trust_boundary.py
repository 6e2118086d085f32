"""The trust boundary (docs/design.md, "Trust boundary"): no input a user hands the package deletes their data, runs
code, or passes a diverged run off as a result. One block per failure found in review, each through the entry point
a user reaches it by; ``experiments/faults/fault_check.py`` replays the same seven through the installed command."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fixtures as fx
import numpy as np
import pytest
import torch
import yaml

from jointdiff.cli import console

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "jointdiff"

TINY_FIT = {
    "seed_everything": 0,
    "trainer": {
        "max_steps": 3, "limit_val_batches": 0, "enable_progress_bar": False, "enable_model_summary": False,
        "log_every_n_steps": 1,
        "logger": {"class_path": "jointdiff.workflow.loggers.RunCSVLogger", "init_args": {"save_dir": "unused"}},
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"save_last": True, "every_n_train_steps": 1, "save_top_k": -1}},
            {"class_path": "jointdiff.callbacks.MetricsJSON"},
            {"class_path": "jointdiff.callbacks.workflow.RunRecord"},
        ],
    },
    "model": {"class_path": "jointdiff.models.JointDiffusion",
              "init_args": {"model_channels": 16, "norm_groups": 8, "num_res_blocks": 1, "attention_downsample": [],
                            "channel_mult": [1, 2], "diffusion_steps": 20, "ema_decay": 0.9}},
    "data": {"class_path": "jointdiff.data.FashionMNISTDataModule",
             "init_args": {"batch_size": 8, "eval_batch_size": 16, "val_fraction": 0.1}},
}


@pytest.fixture
def tiny_fit(tmp_path, monkeypatch):
    """``run(folder, *args) -> (exit code, stderr lines)``: ``jointdiff fit`` of a tiny model on fixture
    Fashion-MNIST in ``folder``, in this process."""
    data = tmp_path / "data"
    fx.write_idx(data / "fashion-mnist", n_train=40, n_test=16, seed=0)
    monkeypatch.setenv("JOINTDIFF_DATA_ROOT", str(data))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_FIT))

    def run(folder: Path, *args: str, capsys=None) -> int:
        monkeypatch.setenv("JOINTDIFF_RUN_DIR", str(folder))
        try:
            console(["fit", "-c", str(config), f"--trainer.default_root_dir={folder}", *args])
        except SystemExit as stop:
            return int(stop.code or 0)
        return 0

    return run


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("jointdiff: error:")]


class Payload:
    """Pickles into a call that creates ``marker``: proof that loading the file ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# 1. a corrupt idx file never deletes the user's data folder ------------------------------------------------------
def test_a_truncated_idx_file_in_torchvisions_layout_is_one_line_and_deletes_nothing(tmp_path, monkeypatch):
    from jointdiff.data import FashionMNISTDataModule

    monkeypatch.setenv("JOINTDIFF_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "datasets"
    raw = fx.write_idx_torchvision_layout(root, n_train=20, n_test=10)
    train = raw / "train-images-idx3-ubyte"
    train.write_bytes(train.read_bytes()[:-100])
    (root / "notes.txt").write_text("my notes")
    (root / "cifar-10-batches-py").mkdir()
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x" * 10)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(ValueError, match=re.escape(str(train))) as err:
        FashionMNISTDataModule(root=str(root), val_fraction=0.0).setup()
    assert "\n" not in str(err.value)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # every file of the user is still there


def test_the_cache_module_refuses_to_delete_outside_the_cache(tmp_path, monkeypatch):
    from jointdiff.cache import remove_cache_entry

    monkeypatch.setenv("JOINTDIFF_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    for victim in (mine, tmp_path / "cache", tmp_path / "cache" / ".." / "mine"):
        with pytest.raises(RuntimeError, match="refusing to delete"):
            remove_cache_entry(victim)
    assert mine.is_dir() and (tmp_path / "cache").is_dir()


# 2. opening someone else's file never runs their code ------------------------------------------------------------
def test_a_pickle_payload_in_ckpt_path_is_refused_before_it_runs(tmp_path, capsys, tiny_fit):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": Payload(marker)}, evil)
    code = tiny_fit(tmp_path / "run", f"--ckpt_path={evil}")
    lines = error_lines(capsys)
    assert code == 2 and len(lines) == 1 and "JOINTDIFF_TRUST_PICKLE" in lines[0] and str(evil) in lines[0]
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["load_model", "read_checkpoint", "classifier_features", "init_from"])
def test_every_checkpoint_reader_refuses_a_pickle_payload(entry, tmp_path):
    from jointdiff.models.checkpoints import load_model, read_checkpoint
    from jointdiff.models.extractors import build_extractor

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"jointdiff_class": "jointdiff.models.JointDiffusion", "state_dict": {}, "x": Payload(marker)}, evil)
    call = {
        "load_model": lambda: load_model(evil),
        "read_checkpoint": lambda: read_checkpoint(evil, mmap=True),
        "classifier_features": lambda: build_extractor(f"classifier:{evil}"),
        "init_from": lambda: __import__("jointdiff.models", fromlist=["JointDiffusion"]).JointDiffusion(
            image_size=28, channels=1, num_classes=10, model_channels=16, norm_groups=8, num_res_blocks=1,
            attention_downsample=[], channel_mult=(1, 2), diffusion_steps=20, init_from=str(evil),
        )._load_initial_weights(),
    }[entry]
    with pytest.raises(ValueError, match="JOINTDIFF_TRUST_PICKLE"):
        call()
    assert not marker.exists()


def test_the_opt_in_reads_a_trusted_pickle(tmp_path, monkeypatch):
    from jointdiff.models.checkpoints import read_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "trusted.ckpt"
    torch.save({"state_dict": {}, "x": Payload(marker)}, path)
    monkeypatch.setenv("JOINTDIFF_TRUST_PICKLE", "1")
    with pytest.warns(UserWarning, match="fully unpickling"):
        read_checkpoint(path)
    assert marker.exists()  # what the user asked for, explicitly


@pytest.mark.parametrize("spec", ["classifier", "sampling"])
def test_a_class_named_in_a_checkpoint_is_built_only_if_it_is_a_jointdiff_lightning_module(spec, tmp_path):
    from jointdiff.models.checkpoints import load_model
    from jointdiff.models.extractors import build_extractor

    marker = tmp_path / "ran"
    for named in ("subprocess.Popen", "jointdiff.files.atomic_write", "jointdiff.nn.unet.UNet"):
        path = tmp_path / "strings.ckpt"  # only strings: loads with weights_only=True
        torch.save({"jointdiff_class": named, "state_dict": {},
                    "hyper_parameters": {"args": ["touch", str(marker)]}}, path)
        with pytest.raises(ValueError, match="jointdiff"):
            build_extractor(f"classifier:{path}") if spec == "classifier" else load_model(path)
        assert not marker.exists()


def test_a_checkpoints_class_path_for_lightning_is_checked_before_the_parser_imports_it(tmp_path, capsys, tiny_fit):
    ckpt = tmp_path / "named.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "antigravity.Sky"}}, ckpt)
    assert tiny_fit(tmp_path / "run", f"--ckpt_path={ckpt}") == 2
    (line,) = error_lines(capsys)
    assert "antigravity.Sky" in line and "not a model of jointdiff" in line
    assert "antigravity" not in sys.modules


def test_inception_weights_that_need_unpickling_never_reach_torch_fidelity(tmp_path):
    from jointdiff.metrics.extractors import InceptionFeatures

    marker = tmp_path / "ran"
    weights = tmp_path / "pt_inception.pth"
    torch.save({"conv.weight": torch.zeros(1), "x": Payload(marker)}, weights)
    with pytest.raises(ValueError, match="JOINTDIFF_TRUST_PICKLE"):
        InceptionFeatures(str(weights), allow_download=False)
    assert not marker.exists()


def test_a_cifar_batch_that_builds_objects_is_refused(tmp_path):
    import pickle

    from jointdiff.data.cifar import read_cifar_batch

    marker = tmp_path / "ran"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": Payload(marker)}))
    with pytest.raises(ValueError, match="not a plain-data pickle"):
        read_cifar_batch(path, "labels")
    assert not marker.exists()


# 3. a diverged run fails, and nothing reports it as a result ------------------------------------------------------
def _finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_a_diverged_fit_stops_with_one_line_writes_no_nan_checkpoint_and_records_failed(tmp_path, capsys, tiny_fit):
    run = tmp_path / "run"
    code = tiny_fit(run, "--model.init_args.lr=1e30")
    lines = error_lines(capsys)
    assert code != 0 and len(lines) == 1 and "training diverged" in lines[0] and "at step" in lines[0], lines
    assert all(_finite(p) for p in run.rglob("*.ckpt"))  # the last good one survives, no NaN one is written
    attempt = json.loads((run / "run.json").read_text())["attempts"][-1]
    assert attempt["status"] == "failed" and "training diverged" in attempt["reason"]


class NaNAtStep(__import__("lightning").LightningModule):
    """A linear model whose loss is NaN from training step ``bad`` on (0-based batch index)."""

    def __init__(self, bad: int):
        super().__init__()
        self.bad, self.layer = bad, torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/mse_loss", loss)
        return loss * (math.nan if self.global_step >= self.bad else 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # the weights stay finite: only the loss shows it

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(64, 2)), batch_size=4)


@pytest.mark.parametrize("every", [1, 5])
def test_the_device_flag_names_the_first_bad_step_even_when_read_later(every, tmp_path):
    import lightning as L

    from jointdiff.callbacks.finite import NonFiniteLossError, StopOnNonFinite

    trainer = L.Trainer(max_steps=12, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, callbacks=[StopOnNonFinite(check_every_n_steps=every)])
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 \(loss=nan, train/mse_loss=") as err:
        trainer.fit(NaNAtStep(bad=2))
    assert f"stopped at step {3 if every == 1 else 5}" in str(err.value)


def test_test_sample_and_score_refuse_a_checkpoint_of_non_finite_weights(tmp_path, capsys, tiny_fit):
    from jointdiff.models.checkpoints import load_model

    assert tiny_fit(tmp_path / "run", "--trainer.max_steps=1") == 0
    good = next((tmp_path / "run").rglob("last.ckpt"))
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    name = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point())
    checkpoint["state_dict"][name] = torch.full_like(checkpoint["state_dict"][name], math.nan)
    bad = tmp_path / "nan.ckpt"
    torch.save(checkpoint, bad)
    with pytest.raises(ValueError, match="non-finite weights"):
        load_model(bad)  # the loader of sample, score, counterfactual, alpha-sweep, --judge, --classifier
    config = tmp_path / "tiny.yaml"
    with pytest.raises(SystemExit):
        console(["test", "-c", str(config), f"--ckpt_path={bad}", f"--trainer.default_root_dir={tmp_path / 't'}"])
    (line,) = error_lines(capsys)
    assert "non-finite weights" in line


def test_metrics_json_stays_strict_json(tmp_path):
    from jointdiff.files import atomic_write_json

    path = tmp_path / "metrics.json"
    atomic_write_json({"test": {"test/acc": 0.5, "test/loss": math.nan, "x": [math.inf, 1.0]}}, path)

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data == {"test": {"test/acc": 0.5, "test/loss": None, "x": [None, 1.0]}}


def test_report_and_paper_list_a_failed_run_as_failed_not_as_a_result(tmp_path, capsys, tiny_fit):
    from jointdiff.runs import run_failure
    from jointdiff.workflow.report import build_report

    run = tmp_path / "runs" / "diverged"
    tiny_fit(run, "--model.init_args.lr=1e30")
    assert "training diverged" in (run_failure(run) or "")
    for old_record in (False, True):  # the run wrote no metrics.json; an earlier attempt's must not count either
        if old_record:
            (run / "metrics.json").write_text(json.dumps({"test": {"test/acc": 0.125, "global_step": 3}}))
        text, _ = build_report([str(tmp_path / "runs")], str(tmp_path / "report"))
        assert "0 finished runs (1 failed" in text and "## Failed runs" in text and "12.5" not in text


# 4. score never scores a NaN or malformed file --------------------------------------------------------------------
def test_score_refuses_nan_empty_object_and_pickled_sample_files(tmp_path):
    from jointdiff.sampling.files import read_samples

    marker = tmp_path / "ran"
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)
    x[:2] = np.nan
    np.savez(tmp_path / "nan.npz", arr_0=x)
    np.savez(tmp_path / "empty.npz", arr_0=np.zeros((0, 8, 8, 1), np.uint8))
    np.savez(tmp_path / "object.npz", arr_0=np.array([{"a": 1}], dtype=object))
    torch.save({"arr_0": Payload(marker)}, tmp_path / "evil.pt")
    for name, message in (("nan.npz", "2 of 4 images hold NaN"), ("empty.npz", "holds no images"),
                          ("object.npz", "not a readable .npz"), ("evil.pt", "JOINTDIFF_TRUST_PICKLE")):
        with pytest.raises(ValueError, match=message) as err:
            read_samples(tmp_path / name, value_range="-1,1")
        assert "\n" not in str(err.value)
    assert not marker.exists()


def test_score_reads_only_the_arrays_it_uses(tmp_path):
    from jointdiff.sampling.files import read_samples

    images = np.zeros((3, 8, 8, 1), np.uint8)
    # an object array beside the images would need pickles to read: it must not be read at all
    np.savez(tmp_path / "extra.npz", arr_0=images, notes=np.array([{"a": 1}], dtype=object))
    x, targets, info = read_samples(tmp_path / "extra.npz")
    assert x.shape == (3, 1, 8, 8) and targets is None and info["images_key"] == "arr_0"


# 5. two writers of one file or one cache never break each other ----------------------------------------------------
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from jointdiff.files import atomic_open
    path, go, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    with atomic_open(path, "w") as f:
        f.write(tag * 1000)
        f.flush()
        Path(str(go) + "." + tag).touch()   # "I am mid-write"
        while not go.exists():
            time.sleep(0.01)
        f.write(tag * 1000)
    print("ok")
""")


def test_two_processes_writing_one_file_both_succeed(tmp_path):
    path, go = tmp_path / "feat.pt", tmp_path / "go"
    slow = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(go), "a"], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not Path(f"{go}.a").exists() and time.time() < deadline:
        time.sleep(0.01)
    go_b = tmp_path / "go_b"
    go_b.touch()  # the second writer does not wait: it writes the whole file while the first is mid-write
    fast = subprocess.run([sys.executable, "-c", WRITER, str(path), str(go_b), "b"], capture_output=True, text=True)
    go.touch()
    out, _ = slow.communicate(timeout=60)
    assert fast.returncode == 0 and slow.returncode == 0 and out.strip() == "ok", fast.stderr
    assert path.read_text() in ("a" * 2000, "b" * 2000)
    assert not list(tmp_path.glob(".feat.pt.*.partial"))


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    from jointdiff.data import FashionMNISTDataModule
    dm = FashionMNISTDataModule(root=sys.argv[1], val_fraction=0.0)
    dm.setup()
    print(len(dm.train_set), int(dm.train_set.images.sum()))
""")


def test_two_processes_building_one_idx_cache_entry_both_read_it_whole(tmp_path):
    data = tmp_path / "data"
    fx.write_idx(data, n_train=30, n_test=10)
    go = tmp_path / "go"
    env = {**os.environ, "JOINTDIFF_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(data), str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1.0)
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in results]
    assert results[0][0] == results[1][0] and results[0][0].startswith("30 ")
    entries = [p for p in (tmp_path / "cache" / "idx").rglob("*") if p.parent.parent.name == "idx"]
    assert len(entries) == 1 and not list((tmp_path / "cache" / "idx").rglob(".build-*"))


# 6. a SLURM checkpoint is set aside only when it is definitely corrupt ---------------------------------------------
def test_an_io_error_never_sets_an_hpc_checkpoint_aside(tmp_path, monkeypatch):
    from jointdiff.workflow import checkpoint_io

    good = tmp_path / "hpc_ckpt_1.ckpt"
    torch.save({"state_dict": {}, "global_step": 1}, good)

    def flaky(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(torch, "load", flaky)
    with pytest.raises(OSError, match="Input/output"):
        checkpoint_io.set_aside_unreadable_hpc_checkpoints(tmp_path)
    assert good.is_file() and not list(tmp_path.glob("unreadable-*"))


def test_a_requeue_whose_hpc_checkpoints_are_all_corrupt_never_restarts_from_step_0(tmp_path, capsys, tiny_fit):
    run = tmp_path / "run"
    assert tiny_fit(run) == 0
    last = next(run.rglob("last.ckpt"))
    before = last.read_bytes()
    (run / "hpc_ckpt_1.ckpt").write_bytes(before[:5000])  # truncated: set aside
    assert tiny_fit(run) == 2
    (line,) = error_lines(capsys)
    assert "already holds checkpoints" in line and "--restart" in line
    assert last.read_bytes() == before and list(run.glob("unreadable-hpc-ckpt-1.ckpt"))
    assert tiny_fit(run, "--restart=true", "--trainer.max_steps=1") == 0  # the explicit flag starts over


# 7. sweeps --------------------------------------------------------------------------------------------------------
def _sweep(tmp_path: Path, values, name="s") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": name, "method": "grid", "program": "x.py",
                                    "command": ["${interpreter}", "-c", "print(1)", "${args}"],
                                    "parameters": {"model.init_args.lr": {"values": values}}}))
    return path


def test_a_sweep_value_with_a_newline_is_refused(tmp_path):
    from jointdiff.workflow.sweep_jobs import slurm

    with pytest.raises(ValueError, match="control character"):
        slurm(str(_sweep(tmp_path, ["1e-3", "1e-4\nrm -rf ~"])), out=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "commands.tsv").exists()


def test_a_sweep_name_cannot_leave_the_runs_folder(tmp_path, monkeypatch):
    from jointdiff.workflow.sweep_jobs import run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="not a safe folder name"):
        run(str(_sweep(tmp_path, [1], name="../../escaped")))
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "runs").exists()


def test_a_second_runner_into_a_busy_sweep_folder_is_refused(tmp_path):
    from jointdiff.workflow.sweep_jobs import run

    folder = tmp_path / "out"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock\n"
                               "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True)\n"
                               "time.sleep(60)",
                               str(folder / ".sweep.json.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="another runner"):
            run(str(_sweep(tmp_path, [1])), out=str(folder))
        assert not (folder / "sweep.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_report_skips_and_lists_unreadable_json(tmp_path):
    from jointdiff.workflow.report import build_report

    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "sweep.json").write_text("{ truncated")
    (tmp_path / "runs" / "b").mkdir()
    (tmp_path / "runs" / "b" / "alpha_sweep.json").write_text("[1, 2]")
    text, _ = build_report([str(tmp_path / "runs")], str(tmp_path / "report"))
    assert "## Unreadable files" in text and "a/sweep.json" in text and "b/alpha_sweep.json" in text


# the rule, enforced on the source --------------------------------------------------------------------------------
def test_no_module_of_the_package_unpickles_or_deletes_folders_outside_its_one_home():
    """Full unpickling only in jointdiff/trust.py (under the user's opt-in); folder deletion only in
    jointdiff/cache.py (inside the cache)."""
    rules = [(r"weights_only\s*=\s*False|pickle\.loads?\(|torch\.load\((?![^)]*weights_only\s*=\s*True)", "trust.py"),
             (r"rmtree", "cache.py")]
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for pattern, home in rules:
            for m in re.finditer(pattern, text):
                if path.name != home:
                    line = text[: m.start()].count("\n") + 1
                    found.append(f"{path.relative_to(REPO)}:{line}: {m.group()}")
    assert not found, found
