"""The CPU smoke variants of the paper runs instantiate (see test_configs.py for the scheme) with a small model
(``configs/base/tiny_unet.yaml``) and the CPU budget; and every YAML under configs/ and experiments/evidence/configs/
is in a tested composition.

The smoke overlays act per model class and per DataModule, so the runs built here are the fewest that put every
method and every fragment under the overlays at least once (``QUICK_RUNS``)."""

from __future__ import annotations

import pytest
from test_configs import (  # noqa: F401
    CONFIGS,
    EVIDENCE_CONFIGS,
    PAPER_RUNS,
    REPO,
    STANDALONE,
    build,
    no_data,
    tiny_ddpm,
)

from jointdiff.workflow import paper


def quick_representatives(runs: list[paper.PaperRun]) -> list[paper.PaperRun]:
    seen: set = set()
    out = []
    for run in runs:
        new = {run.tags["method"], *run.configs} - seen
        if new:
            out.append(run)
            seen |= new
    return out


QUICK_RUNS = quick_representatives(PAPER_RUNS)
PRESET_FILES = ["configs/base/gpu.yaml", "configs/base/wandb.yaml", "configs/base/slurm.yaml",
                "configs/eval/fid_classifier_fashion_mnist.yaml"]  # composed in test_presets_compose_…


@pytest.mark.parametrize("run", QUICK_RUNS, ids=lambda r: r.key)
def test_quick_variant_instantiates_small_on_cpu(run, tiny_ddpm):  # noqa: F811
    args = run.fit_args(quick=True, root="runs")[2 * len(run.config_files(quick=True)):]
    args = [a for a in args if not a.startswith("--model.init_args.checkpoint=")]
    cli = build(run.config_files(quick=True), args, tiny_ddpm=tiny_ddpm)
    cfg = cli.config["fit"]
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_steps == 200 and cfg.trainer.max_epochs is None
    assert cfg.data.init_args.batch_size == 32
    n_params = sum(p.numel() for p in cli.model.network.parameters())  # without the EMA copy
    assert n_params < 5_000_000, f"{run.key}: the smoke variant still has {n_params:,} parameters"
    callbacks = {type(cb).__name__ for cb in cli.trainer.callbacks}
    assert not callbacks & {"SampleGrid", "GenerativeEvaluation"}  # no T-step sampling on a CPU
    assert cfg.trainer.default_root_dir == str(run.run_dir(quick=True))


def test_every_yaml_is_in_a_tested_composition():
    """Static: the union of the files the tests above and test_configs.py compose covers configs/ and the evidence
    configs entirely."""
    used = {p.resolve() for p in STANDALONE}
    for run in PAPER_RUNS:
        used.update((REPO / f).resolve() for f in run.config_files(quick=False) + run.config_files(quick=True))
    used.update((REPO / f).resolve() for f in PRESET_FILES)
    missing = sorted(str(p.relative_to(REPO)) for folder in (CONFIGS, EVIDENCE_CONFIGS) for p in folder.rglob("*.yaml")
                     if p.resolve() not in used)
    assert not missing, (f"configs in no tested composition: {missing}. A standalone config needs a model and a "
                         "data class_path; a fragment needs an entry in jointdiff/workflow/paper.py or a "
                         "composition in tests/test_configs*.py")
    assert paper.TINY_UNET in PAPER_RUNS[0].config_files(quick=True)
