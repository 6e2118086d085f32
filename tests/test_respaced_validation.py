"""The reading rules of the respaced-sampler validation (docs/sampling.md, rules 1-4) as
experiments/evidence/respaced_validation.py applies them, on result files written here with hand-chosen numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FULL = {50: (0.70, 60.0), 100: (0.80, 62.0), 200: (0.80, 80.0)}  # α → (hit rate, FD) of the full chain


@pytest.fixture
def rules(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "experiments" / "evidence"))  # the script imports judge.py beside it
    spec = importlib.util.spec_from_file_location("respaced_validation",
                                                  REPO / "experiments/evidence/respaced_validation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module.read_rules
    sys.modules.pop("judge", None)


def write(folder: Path, seed: int, steps, eta, rule, gap: dict[int, float], fd: float) -> None:
    rows = [{"alpha": a, "judge_hit_rate": FULL[a][0] + gap[a], "fid": FULL[a][1] if steps is None else fd}
            for a in FULL] + [{"alpha": 0, "judge_hit_rate": 0.1, "fid": 70.0}]  # α = 0: read by no rule
    name = f"seed{seed}_all" if steps is None else f"seed{seed}_steps{steps}_eta{eta:g}_{rule}"
    (folder / f"{name}.json").write_text(json.dumps({"seed": seed, "steps": steps or 500, "eta": eta,
                                                     "respaced_alpha": rule, "rows": rows}))


def table(folder: Path, stride_fd: float, seeds=(0, 1, 2), skip=()) -> None:
    folder.mkdir(exist_ok=True)
    cells = {  # (steps, η, rule) → (gap at every α, FD)
        (None, None, None): (0.0, 0.0),
        (50, 0.0, "same"): (-0.20, 90.0),  # rule 1: no match
        (50, 0.5, "same"): (-0.04, 70.0),  # matches, the lowest FD among the matching: rule 2 picks η = 0.5
        (50, 1.0, "same"): (+0.02, 75.0),  # matches with a larger gap, but a higher FD
        (50, 1.0, "stride"): (+0.08, stride_fd),  # a gap larger than `same`'s by 0.06 (> 0.05)
        (25, 0.5, "same"): (-0.06, 72.0),  # η = 0.5 misses at 25 steps, so rule 4 picks 50
        (100, 0.5, "same"): (-0.01, 69.0),
    }
    for seed in seeds:
        for (steps, eta, rule), (gap, fd) in cells.items():
            if (seed, steps, eta) not in skip:
                write(folder, seed, steps, eta, rule, {a: gap for a in FULL}, fd)


def test_the_rules_pick_the_lowest_fd_among_matching_cells_and_the_fewest_matching_steps(rules, tmp_path):
    table(tmp_path / "a", stride_fd=100.0)
    read = rules(tmp_path / "a")
    assert read["complete"]
    assert {eta: v["matches"] for eta, v in read["cells_at_50"].items()} == {0.0: False, 0.5: True, 1.0: True}
    assert read["cells_at_50"][0.5]["mean_gap"] == pytest.approx(-0.04)
    assert read["eta"] == 0.5 and read["steps"] == 50
    assert read["alpha_rule"] == "same"  # stride's gap is larger, but its FD (100) is higher than same's (75)
    table(tmp_path / "b", stride_fd=74.0)
    assert rules(tmp_path / "b")["alpha_rule"] == "stride"  # larger by > 0.05 at an FD no higher


def test_a_reading_with_a_seed_missing_from_a_cell_it_needs_is_incomplete(rules, tmp_path):
    table(tmp_path / "c", stride_fd=100.0, skip={(2, 25, 0.5)})
    assert not rules(tmp_path / "c")["complete"]
    table(tmp_path / "d", stride_fd=100.0, skip={(2, 100, 0.5)})  # 100 steps: not read once 50 matches
    assert rules(tmp_path / "d")["complete"]


def test_a_generated_block_is_replaced_and_nothing_else(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "experiments" / "evidence"))
    from blocks import render_block, replace_block

    doc = "a\n<!-- evidence:x -->\nold\n<!-- /evidence:x -->\nb <!-- evidence:y -->\nkeep\n<!-- /evidence:y -->\n"
    assert replace_block(doc, "x", "new") == doc.replace("old", "new")
    assert replace_block(doc, "z", "new") == doc
    (tmp_path / "d.md").write_text(doc)
    with pytest.raises(KeyError, match="no <!-- evidence:z --> block"):
        render_block(tmp_path / "d.md", "z", "new")
    sys.modules.pop("blocks", None)


def test_the_defaults_are_what_the_committed_validation_reads(rules):
    """The defaults follow the evidence: the reading rules applied to the committed result files give the η, the
    α rule and the steps that the package and the demo use (docs/sampling.md, "Result, 2026-12-08")."""
    import inspect

    import yaml

    from jointdiff.diffusion.conditional import ClassSteering
    from jointdiff.diffusion.ddim import RESPACED_ETA, SWEEP_STEPS

    read = rules(REPO / "experiments/evidence/results/respaced_validation/demo_41e2bb01d36c")
    assert read["complete"]
    assert (read["eta"], read["steps"], read["alpha_rule"]) == (RESPACED_ETA, SWEEP_STEPS, "same")
    assert inspect.signature(ClassSteering).parameters["respaced_alpha"].default == read["alpha_rule"]
    demo = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    callbacks = demo["trainer"]["callbacks"]
    grid = next(c["init_args"] for c in callbacks if c["class_path"].endswith("ClassConditionalGrid"))
    assert grid["steps"] == read["steps"] and "eta" not in grid  # the demo's class grid: the validated sampler
