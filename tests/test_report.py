"""``jointdiff report``: runs on disk → the paper's tables with the paper's numbers beside ours, and the plots.

One real run (a 2-step fit through the CLI, in this process) checks that the report reads what runs really write;
run folders written here in the same formats (LightningCLI's config.yaml keys, MetricsJSON's metrics.json,
alpha-sweep's alpha_sweep.json, the sweep runner's sweep.json) cover every table's classification rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fixtures import write_idx  # tests/ is on sys.path (rootdir conftest, no package)

from jointdiff.workflow import paper_numbers as P
from jointdiff.workflow.report import build_report
from jointdiff.workflow.results import collect_runs, pick

REPO = Path(__file__).resolve().parents[1]


def cells(markdown: str, table_title: str, row_label: str) -> dict[str, str]:
    """Column header → cell of the row starting with ``row_label`` in the table under ``## <table_title>``."""
    section = markdown.split(f"## {table_title}", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        row = [c.strip() for c in line.strip("|").split("|")]
        if row[0] == row_label:
            return dict(zip(header, row, strict=True))
    raise AssertionError(f"no row {row_label!r} in {table_title!r}:\n{section}")


def write_run(folder: Path, model: str, data: str, model_args: dict | None = None, data_args: dict | None = None,
              test: dict | None = None, steps: int = 100, max_steps: int = 100) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"trainer": {"max_steps": max_steps},
              "model": {"class_path": f"jointdiff.models.{model}", "init_args": model_args or {}},
              "data": {"class_path": f"jointdiff.data.{data}", "init_args": data_args or {}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"fit": {"global_step": steps}, "test": {"global_step": steps, **(test or {})}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def real_run(tmp_path, monkeypatch):
    """A 2-step joint model on a small Fashion-MNIST in its real idx format, through `jointdiff fit`."""
    from jointdiff.cli import run_lightning_cli

    write_idx(tmp_path / "fmnist", n_train=80, n_test=40)
    folder = tmp_path / "runs" / "quick" / "fashion_mnist" / "joint"
    monkeypatch.setenv("JOINTDIFF_RUN_DIR", str(folder))
    monkeypatch.chdir(REPO)
    run_lightning_cli([
        "fit", "--config", "configs/base/default.yaml", "--config", "configs/paper/data/fashion_mnist.yaml",
        "--config", "configs/paper/models/joint.yaml", "--config", "configs/base/cpu_quick.yaml",
        "--config", "configs/base/tiny_unet.yaml", f"--data.init_args.root={tmp_path / 'fmnist'}",
        "--model.init_args.model_channels=16", "--model.init_args.norm_groups=8",
        "--model.init_args.diffusion_steps=50",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--data.init_args.batch_size=8",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={folder}",
    ])
    monkeypatch.delenv("JOINTDIFF_RUN_DIR")
    return folder


def test_report_tabulates_a_real_run_beside_the_paper(real_run, tmp_path):
    metrics = json.loads((real_run / "metrics.json").read_text())
    text, _ = build_report([str(tmp_path / "runs")], str(tmp_path / "out"))
    ours = 100 * metrics["test"]["test/acc"]
    cell = cells(text, "Table 1", "Ours (joint)")["F-MNIST"]
    assert cell == f"{ours:.1f} ({P.TABLE1['joint']['fashion_mnist']:.1f})" == f"{ours:.1f} (95.3)"
    assert cells(text, "Table 1", "Classifier (stand-alone)")["CIFAR-10"] == "– (94.0)"
    assert f"`{real_run}` (2 of 2 steps)" in text  # the run and its budget are named under the table
    assert (tmp_path / "out" / "report.md").read_text().strip() == text.strip()


def test_each_table_classifies_runs_by_their_config(tmp_path):
    root = tmp_path / "runs"
    acc = lambda a: {"test/acc": a}  # noqa: E731
    # Table 5: semi-supervised CIFAR-10 at 5% (joint) and a small fully labelled classifier without augmentation
    write_run(root / "a", "JointDiffusion", "CIFAR10DataModule", {"classifier_weight": 0.001},
              {"labelled_fraction": 0.05}, acc(0.5))
    write_run(root / "b", "StandaloneClassifier", "CIFAR10DataModule", {"classifier_augmentation": "off"}, {},
              acc(0.6))
    # …and a Table 1 classifier (reference augmentation) that must not land in Table 5
    write_run(root / "c", "StandaloneClassifier", "CIFAR10DataModule", {"classifier_augmentation": "reference"}, {},
              acc(0.7))
    # Table 6: USPS→MNIST source-only classifier, stage 1 and stage 2 joint, upper bound on MNIST
    da = {"source": "usps", "target": "mnist"}
    write_run(root / "d", "StandaloneClassifier", "DomainAdaptationDataModule", {}, {**da, "stage": "source"},
              acc(0.41))
    write_run(root / "e", "JointDiffusion", "DomainAdaptationDataModule", {"classifier_weight": 0.001},
              {**da, "stage": "source"}, acc(0.42))
    write_run(root / "f", "JointDiffusion", "DomainAdaptationDataModule",
              {"classifier_weight": 0.001, "skip_classifier_loss": True}, {**da, "stage": "target"}, acc(0.43))
    write_run(root / "g", "StandaloneClassifier", "MNISTDataModule", {}, {}, acc(0.95))
    write_run(root / "h", "StandaloneClassifier", "MNISTDataModule", {}, {"image_size": 32, "channels": 3}, acc(0.9))
    text, plots = build_report([str(root)], str(tmp_path / "out"))

    t5_joint, t5_clf = cells(text, "Table 5", "Ours (joint)"), cells(text, "Table 5", "Classifier")
    assert t5_joint["CIFAR-10 5%"] == "50.0 (78.2)" and t5_clf["CIFAR-10 100%"] == "60.0 (81.0)"
    assert cells(text, "Table 1", "Classifier (stand-alone)")["CIFAR-10"] == "70.0 (94.0)"
    t6 = {label: cells(text, "Table 6", label)["USPS→MNIST"] for label in (
        "Classifier (source only)", "Ours before adaptation (stage 1; not in the paper)",
        "Ours (joint, then diffusion-only on target)", "Classifier on target (upper bound)")}
    assert list(t6.values()) == ["41.0 (54.7)", "42.0 (–)", "43.0 (90.5)", "95.0 (96.8)"]
    assert cells(text, "Table 6", "Classifier on target (upper bound)")["SVHN→MNIST"] == "90.0 (96.1)"  # MNIST32
    assert (tmp_path / "out" / "accuracy_vs_labelled_fraction.png") in plots


def test_generative_scores_prefer_the_paper_convention_and_mark_other_features(tmp_path):
    root = tmp_path / "runs"
    gen = {f"test/gen_inception/{m}_{c}": v for c, base in (("standard", 10.0), ("reference", 20.0))
           for m, v in (("fid", base), ("precision_prd", base / 100), ("recall_prd", base / 200))}
    write_run(root / "ddpm", "JointDiffusion", "FashionMNISTDataModule", {"classifier_weight": 0.0}, {}, gen)
    write_run(root / "joint", "JointDiffusion", "CIFAR10DataModule", {"classifier_weight": 0.001}, {},
              {"test/acc": 0.5, "test/gen_clf/fid_standard": 3.0, "test/gen_clf/precision_prd_standard": 0.5,
               "test/gen_clf/recall_prd_standard": 0.25})
    text, _ = build_report([str(root)], str(tmp_path / "out"))
    assert cells(text, "Table 2", "DDGM")["F-MNIST"] == "20.0 / 20.0 / 10.0 (7.8 / 71.5 / 65.3)"  # reference
    assert cells(text, "Table 2", "Ours (unconditional)")["CIFAR-10"] == "3.0 / 50.0 / 25.0 † (7.9 / 69.9 / 56.4)"


def test_alpha_sweeps_give_the_conditional_row_and_the_precision_recall_plot(tmp_path):
    root = tmp_path / "runs"
    model = write_run(root / "joint_noisy", "JointDiffusion", "FashionMNISTDataModule",
                      {"classifier_weight": 0.001, "noisy_classifier": "replace"}, {}, {"test/acc": 0.8})
    rows = [{"alpha": a, "fid": f, "precision": p, "recall": r, "judge_hit_rate": h}
            for a, f, p, r, h in ((0, 5.0, 0.5, 0.6, 0.1), (100, 9.0, 0.6, 0.5, 0.5), (200, 7.0, 0.7, 0.4, 0.7))]
    sweep = root / "alpha"
    sweep.mkdir()
    (sweep / "alpha_sweep.json").write_text(json.dumps({  # as jointdiff alpha-sweep writes it
        "rows": rows, "checkpoint": str(model / "checkpoints" / "last.ckpt"),
        "features": {"type": "inception", "dim": 2048}}))
    text, plots = build_report([str(root)], str(tmp_path / "out"))
    # D10: the α > 0 with the best FID (α = 0 is unconditional sampling)
    assert cells(text, "Table 2", "Ours (conditional sampling)")["F-MNIST"] == "7.0 / 70.0 / 40.0 (5.9 / 63.1 / 63.2)"
    assert "α=200" in text
    assert (tmp_path / "out" / "alpha_precision_recall.png") in plots


def test_offline_sweeps_are_tabulated_with_their_parameters(tmp_path):
    root = tmp_path / "runs"
    runs = []
    for i, (value, acc) in enumerate(((0.001, 0.3), (0.01, 0.4))):
        folder = write_run(root / "sw" / f"run_{i:03d}", "JointDiffusion", "FashionMNISTDataModule",
                           {"classifier_weight": value}, {}, {"test/acc": acc}, steps=2)
        runs.append({"index": i, "params": {"model.init_args.classifier_weight": value}, "run_dir": str(folder),
                     "status": "finished"})
    (root / "sw" / "sweep.json").write_text(json.dumps({"name": "tiny", "method": "grid",
                                                        "metric": {"name": "test/acc"}, "runs": runs}))
    text, _ = build_report([str(root)], str(tmp_path / "out"))
    table = cells(text, "Sweep `tiny`", "001")
    assert table["model.init_args.classifier_weight"] == "0.01" and table["test/acc"] == "0.4000"


def test_the_longest_trained_run_fills_a_cell(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "short", "StandaloneClassifier", "SVHNDataModule", {}, {}, {"test/acc": 0.9}, steps=10)
    write_run(root / "long", "StandaloneClassifier", "SVHNDataModule", {}, {}, {"test/acc": 0.5}, steps=1000)
    assert pick(collect_runs([root])).path == root / "long"
    text, _ = build_report([str(root)], str(tmp_path / "out"))
    assert cells(text, "Table 1", "Classifier (stand-alone)")["SVHN"] == "50.0 (96.9)"


def test_missing_roots_are_named():
    from jointdiff.workflow.report import report

    with pytest.raises(FileNotFoundError, match="nowhere"):
        report(["nowhere"], quiet=True)
