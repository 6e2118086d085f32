"""experiments/evidence/cpu_evidence.py: α-sweep parts run as separate processes merge into one result, and parts that
do not belong together are refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def evidence(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "experiments" / "evidence"))  # its sibling modules (blocks.py)
    spec = importlib.util.spec_from_file_location("cpu_evidence", REPO / "experiments" / "evidence" / "cpu_evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(module, "FIGURES", tmp_path / "figures")
    return module


def write_part(folder: Path, cells: list[tuple[float, int]], judge_accuracy: float = 0.8) -> Path:
    rows = [{"alpha": a, "direction": d, "judge_hit_rate": a / 1000, "own_head_hit_rate": 1.0, "fid": 50 + a,
             "precision": 0.8, "recall": 0.9, "num": 200} for a, d in cells]
    meta = {"checkpoint": "last.ckpt", "judge_test_accuracy": judge_accuracy,
            "head_accuracy_by_step": {"0": 0.85, "250": 0.5, "50": 0.8},
            "num_per_class": 20, "seed": 0, "clip_denoised": True, "judge": "LeNet-5"}
    folder.mkdir(parents=True)
    (folder / "alpha_sweep_all.json").write_text(json.dumps({"rows": rows, **meta}))
    return folder


def test_parts_merge_into_one_sweep_with_every_row(evidence, tmp_path):
    low = write_part(tmp_path / "low", [(a, 1) for a in (0, 50, 100, 200, 500)])
    rest = write_part(tmp_path / "rest", [(1000, 1), (200, -1), (1000, -1)])
    evidence.merge_alpha([str(rest), str(low)])
    merged = json.loads((tmp_path / "results" / "alpha" / "sweep.json").read_text())
    assert [(r["alpha"], r["direction"]) for r in merged["rows"]] == [
        (0, 1), (50, 1), (100, 1), (200, 1), (500, 1), (1000, 1), (200, -1), (1000, -1)]
    assert (tmp_path / "figures" / "alpha_sweep_fmnist_alpha_sweep.png").stat().st_size > 0
    table = evidence.alpha_table()
    assert table.count("\n| ") == 8 and "| 1000 | -1 | 1.0000 |" in table  # 8 rows below the header
    assert "by step: step 0: 0.850, step 50: 0.800, step 250: 0.500." in table  # numeric order, not the keys' order


def test_parts_that_differ_or_miss_rows_are_refused(evidence, tmp_path):
    low = write_part(tmp_path / "low", [(a, 1) for a in (0, 50, 100, 200, 500)])
    other_judge = write_part(tmp_path / "rest", [(1000, 1), (200, -1), (1000, -1)], judge_accuracy=0.7)
    with pytest.raises(ValueError, match="judge_test_accuracy"):
        evidence.merge_alpha([str(low), str(other_judge)])
    with pytest.raises(ValueError, match="lack the rows"):
        evidence.merge_alpha([str(low)])


def test_semi_runs_only_the_models_asked_for_and_skips_finished_runs(evidence, tmp_path, monkeypatch):
    """``--models`` splits the semi part between processes: each runs its own models, trains the DDPM only when it
    runs the probe, and skips a run whose result file exists."""
    commands = []

    def fake_run(cmd):  # stands in for ``jointdiff fit``: leaves the checkpoints the script reads
        commands.append(cmd)
        if "--trainer.logger.init_args.name" in cmd:
            name = cmd[cmd.index("--trainer.logger.init_args.name") + 1]
            folder = tmp_path / "runs" / "semi" / name / "version_0" / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            for step in evidence.SEMI_STEPS:
                (folder / f"step={step}.ckpt").touch()

    monkeypatch.setattr(evidence, "run", fake_run)
    monkeypatch.setattr(evidence, "accuracy_on_test_split", lambda ckpt: {"acc_ema": 0.5, "acc_raw": 0.4})
    evidence.save(evidence.results_path("semi", "classifier_100/class_s1"), {"done": True})

    evidence.semi([0, 1], ["100/class"], ["classifier"])
    configs = [cmd[cmd.index("-c") + 1] for cmd in commands]
    # seed 1 was finished; no DDPM without the probe
    assert configs == ["experiments/evidence/configs/semi_classifier.yaml"]
    assert "--data.init_args.labelled_per_class" in commands[0] and commands[0][-1] == "classifier_100perclass_s0"
    result = json.loads(evidence.results_path("semi", "classifier_100/class_s0").read_text())
    assert result["test"]["1000"] == {"acc_ema": 0.5, "acc_raw": 0.4} and result["seed"] == 0

    commands.clear()
    evidence.semi([0], ["100/class"], ["probe"])
    configs = [cmd[cmd.index("-c") + 1] for cmd in commands]
    assert configs == ["experiments/evidence/configs/semi_ddpm.yaml", "experiments/evidence/configs/semi_probe.yaml"]


def test_stage2_lr_diagnostic_reads_finished_runs_and_refuses_another_rate(evidence, tmp_path, monkeypatch):
    """The stage-2 learning-rate diagnostic runs ``jointdiff adapt --stage2_lr`` once per pair, reads a summary
    already in its run folder instead of re-running, refuses one made at another rate, and renders a row per run
    beside the same run of the ``da`` table."""
    commands = []

    def summary(lr, before, after):
        return {"stage2": {"steps": 600, "checkpoint": "s2.ckpt", "lr": lr}, "stage1": {"steps": 600},
                "target_test_before": {"test/acc_ema": before, "test/acc_raw": before - 0.1},
                "target_test_after": {"test/acc_ema": after, "test/acc_raw": after - 0.1}}

    def fake_run(cmd):
        commands.append(cmd)
        folder = Path(cmd[cmd.index("--out") + 1])
        folder.mkdir(parents=True)
        (folder / "domain_adaptation.json").write_text(json.dumps(summary(float(cmd[cmd.index("--stage2_lr") + 1]),
                                                                           0.8, 0.7)))

    monkeypatch.setattr(evidence, "run", fake_run)
    finished = tmp_path / "runs" / "da_stage2_lr" / "USPS_to_MNIST_s0"
    finished.mkdir(parents=True)
    (finished / "domain_adaptation.json").write_text(json.dumps(summary(evidence.DA_STAGE2_LR, 0.6, 0.5)))
    evidence.save(evidence.results_path("da", "USPS→MNIST_s0"), summary(None, 0.65, 0.25))

    evidence.da_stage2_lr([0])
    assert len(commands) == 1 and commands[0][commands[0].index("--out") + 1].endswith("MNIST_to_USPS_s0")
    assert commands[0][commands[0].index("--stage2_lr") + 1] == str(evidence.DA_STAGE2_LR)
    table = evidence.da_stage2_lr_table()
    assert "| USPS→MNIST | 0 | 0.0001 | 0.6000 / 0.5000 | 0.5000 / 0.4000 | 0.6500 → 0.2500 |" in table
    assert "| MNIST→USPS | 0 | 0.0001 | 0.8000 / 0.7000 | 0.7000 / 0.6000 | — |" in table

    other = tmp_path / "runs" / "da_stage2_lr" / "USPS_to_MNIST_s1"
    other.mkdir(parents=True)
    (other / "domain_adaptation.json").write_text(json.dumps(summary(1e-3, 0.6, 0.5)))
    with pytest.raises(ValueError, match="not 0.0001"):
        evidence.da_stage2_lr([1])


def test_da_runs_both_stages_at_the_config_rate_then_the_baselines(evidence, tmp_path, monkeypatch):
    commands = []

    def fake_run(cmd):
        commands.append(cmd)
        folder = Path(cmd[cmd.index("--out") + 1])
        folder.mkdir(parents=True)
        (folder / "domain_adaptation.json").write_text(json.dumps(
            {"stage1": {"checkpoint": str(folder / "s1.ckpt")}, "stage2": {"steps": 600},
             "target_test_before": {"test/acc_ema": 0.8, "test/acc_raw": 0.7},
             "target_test_after": {"test/acc_ema": 0.6, "test/acc_raw": 0.5}}))

    monkeypatch.setattr(evidence, "run", fake_run)
    monkeypatch.setattr(evidence, "source_test_accuracy", lambda ckpt, s, t: {"acc_ema": 0.95, "acc_raw": 0.9})
    monkeypatch.setattr(evidence, "source_only_classifier", lambda folder, s, t, extra: {"extra": extra})
    evidence.da([1])
    assert len(commands) == 2 and not any("--stage2_lr" in cmd for cmd in commands)
    result = json.loads(evidence.results_path("da", "MNIST→USPS_s1").read_text())
    assert result["source_only_classifier"]["extra"] == [
        "--seed_everything", "1", "--data.init_args.source", "mnist", "--data.init_args.target", "usps"]
    assert result["source_test"]["acc_ema"] == 0.95 and result["target_test_after"]["test/acc_ema"] == 0.6
