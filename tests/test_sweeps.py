"""Offline W&B sweeps: every sweep file in experiments/sweeps expands into command lines the CLI accepts, the
expander follows W&B's semantics (grid product, seeded random draws, the agent's ``--key=value`` strings), the
SLURM array template runs exactly the expanded commands, and ``jointdiff sweep run`` runs two tiny fits end to end."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures import write_idx  # tests/ is on sys.path (rootdir conftest, no package)

from jointdiff.workflow.compose import instantiate
from jointdiff.workflow.launch import Job, write_slurm_array
from jointdiff.workflow.sweep_jobs import run as run_sweep
from jointdiff.workflow.sweeps import SweepError, command_line, expand, fit_args, load_sweep, parameter_sets

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "experiments/sweeps").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("JOINTDIFF_RUN_DIR", raising=False)
    monkeypatch.setenv("WANDB_RUN_ID", "sweep-test")  # nothing generated or written by the W&B logger


def _write(tmp_path: Path, spec: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


# ---------------------------------------------------------------------------------------------------------------
def test_shipped_sweeps_exist():
    assert {p.name for p in SWEEPS} >= {"alpha.yaml", "noisy_timesteps.yaml"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_run_of_a_shipped_sweep_is_accepted_by_its_command(path, capsys):
    """`fit` sweeps: the CLI builds trainer, model and data from each run's argv, with the swept values in place
    (on the meta device). Other commands: their parser accepts each run's arguments (--print_config)."""
    spec = load_sweep(path)
    runs = expand(path)
    assert len(runs) == np.prod([len(p.get("values", [p.get("value")])) for p in spec["parameters"].values()])
    for run in runs:
        args = fit_args(run.argv)
        if args is not None:
            cli = instantiate(args)
            hp = cli.model.hparams
            for key, value in run.params.items():
                assert key.startswith("model.init_args.")
                expected = None if value == "null" else value
                assert hp[key.removeprefix("model.init_args.")] == expected
        else:
            assert run.argv[:4] == ["/usr/bin/env", "jointdiff", "sweep", "alpha"]
            from jointdiff.cli import main

            with pytest.raises(SystemExit) as done:
                main([*run.argv[2:], "--print_config"])
            assert done.value.code in (0, None)
            printed = yaml.safe_load(capsys.readouterr().out)
            assert printed["alpha"] == run.params["alpha"] and printed["data"]["class_path"].endswith(
                "FashionMNISTDataModule")


def test_args_are_the_strings_the_wandb_agent_passes(tmp_path):
    """`${args}` is str(value) after `--name=`, exactly as wandb's agent builds it; `${args_no_hyphens}` and
    `${env}`/`${interpreter}`/`${program}` are filled too."""
    spec = {"method": "grid", "program": "train.py",
            "parameters": {"a.b": {"values": [[0, 25], "null"]}, "lr": {"value": 0.001}},
            "command": ["${env}", "${interpreter}", "${program}", "--fixed", "${args}", "${args_no_hyphens}"]}
    path = _write(tmp_path, spec)
    runs = expand(path, interpreter="python")
    assert [r.argv for r in runs] == [
        ["/usr/bin/env", "python", "train.py", "--fixed", "--a.b=[0, 25]", "--lr=0.001", "a.b=[0, 25]", "lr=0.001"],
        ["/usr/bin/env", "python", "train.py", "--fixed", "--a.b=null", "--lr=0.001", "a.b=null", "lr=0.001"],
    ]


def test_grid_is_the_product_of_values_last_parameter_fastest(tmp_path):
    spec = {"method": "grid", "command": ["x", "${args}"],
            "parameters": {"p": {"values": [1, 2, 3]}, "q": {"values": ["a", "b"]}, "r": {"value": 7}}}
    sets = parameter_sets(load_sweep(_write(tmp_path, spec)))
    assert sets == [dict(p=p, q=q, r=7) for p, q in itertools.product([1, 2, 3], ["a", "b"])]
    assert parameter_sets(load_sweep(_write(tmp_path, spec)), count=2) == sets[:2]


def test_random_search_draws_within_the_distributions_reproducibly(tmp_path):
    spec = {"method": "random", "command": ["x", "${args}"], "run_cap": 4000, "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
        "k": {"distribution": "int_uniform", "min": 1, "max": 4},
        "u": {"min": 0.0, "max": 2.0},  # inferred uniform
        "c": {"values": ["x", "y"], "probabilities": [0.8, 0.2]},
    }}
    spec = load_sweep(_write(tmp_path, spec))
    sets = parameter_sets(spec, seed=3)
    assert sets == parameter_sets(spec, seed=3) and sets != parameter_sets(spec, seed=4)
    lr = np.array([s["lr"] for s in sets])
    k = np.array([s["k"] for s in sets])
    u = np.array([s["u"] for s in sets])
    assert lr.min() >= 1e-5 and lr.max() <= 1e-2
    # log-uniform: log10(lr) is uniform on [-5, -2] (mean -3.5, sd 3/sqrt(12)); 4000 draws → se ≈ 0.014
    assert abs(np.log10(lr).mean() + 3.5) < 0.06
    assert set(k.tolist()) == {1, 2, 3, 4} and all(isinstance(s["k"], int) for s in sets)  # max is included
    assert u.min() >= 0 and u.max() <= 2 and abs(u.mean() - 1.0) < 0.05
    share_x = np.mean([s["c"] == "x" for s in sets])
    assert abs(share_x - 0.8) < 0.03  # binomial se ≈ 0.006


@pytest.mark.parametrize("spec, message", [
    ({"method": "bayes", "parameters": {"a": {"values": [1]}}}, "needs the W&B server"),
    ({"method": "grid", "parameters": {"a": {"min": 0.0, "max": 1.0}}}, "grid search needs"),
    ({"method": "grid", "parameters": {"a": {"parameters": {"b": {"value": 1}}}}}, "nested parameters"),
    ({"method": "random", "parameters": {"a": {"distribution": "beta", "min": 0, "max": 1}}}, "not supported"),
    ({"method": "grid", "parameters": {"a": {"values": [1]}}}, "sets no 'program'"),
    ({"method": "grid", "parameters": {}}, "non-empty mapping"),
])
def test_sweeps_that_need_a_server_or_are_malformed_are_refused_clearly(tmp_path, spec, message):
    with pytest.raises(SweepError, match=message):
        load_sweep(_write(tmp_path, spec))


def test_random_search_without_a_count_is_refused(tmp_path):
    spec = load_sweep(_write(tmp_path, {"method": "random", "command": ["x"], "parameters": {"a": {"values": [1]}}}))
    with pytest.raises(SweepError, match="--count"):
        parameter_sets(spec)


def test_slurm_array_task_runs_exactly_the_expanded_command(tmp_path):
    """`jointdiff sweep slurm` writes one line per run; array.sbatch task k (with a stand-in srun that records its
    argv) runs line k+1's argv, byte for byte, with JOINTDIFF_RUN_DIR set to that run's folder."""
    spec = {"method": "grid", "command": ["${env}", "jointdiff", "fit", "${args}"],
            "parameters": {"model.init_args.noisy_timesteps": {"values": [[0, 25], "null"]},
                           "trainer.max_steps": {"value": 3}}}
    runs = expand(_write(tmp_path, spec))
    jobs = [Job(f"s/run_{r.index}", r.argv, tmp_path / "out" / f"run_{r.index}", {"WANDB_RUN_GROUP": "s g"},
                r.params) for r in runs]
    commands, sbatch = write_slurm_array(jobs, tmp_path / "out", {"name": "s"}, "s", max_parallel=2)
    assert "--array=0-1%2" in sbatch and "experiments/slurm/array.sbatch" in sbatch
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nshift\n' + sys.executable +
                                  ' -c "import json,os,sys; print(json.dumps([os.environ[\'JOINTDIFF_RUN_DIR\'], '
                                  'sys.argv[1:]]))" "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    for task, job in enumerate(jobs):
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": str(task),
               "SLURM_SUBMIT_DIR": str(REPO)}
        out = subprocess.run(["bash", "experiments/slurm/array.sbatch", str(commands)], env=env, cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        run_dir, argv = json.loads(out)
        assert run_dir == str(job.run_dir)
        assert argv == ["env", "WANDB_RUN_GROUP=s g", *job.argv]
        assert job.argv[-1] == f"--trainer.default_root_dir={job.run_dir}"  # fit: the HPC checkpoint lands there


def test_sweep_run_trains_two_tiny_runs_end_to_end(tmp_path, monkeypatch):
    """`jointdiff sweep run` on a two-run grid: each run trains (2 steps of a tiny joint model on a small
    Fashion-MNIST written in its real idx format) in its own folder, which holds its metrics and the swept value;
    sweep.json pairs them."""
    write_idx(tmp_path / "fmnist", n_train=60, n_test=20)
    tiny = ["--config", "configs/demo.yaml", f"--data.init_args.root={tmp_path / 'fmnist'}",
            "--model.init_args.model_channels=16",
            "--model.init_args.norm_groups=8", "--model.init_args.diffusion_steps=50", "--trainer.max_steps=2",
            "--trainer.limit_val_batches=0", "--data.init_args.batch_size=8",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks=[{class_path: jointdiff.callbacks.MetricsJSON}]",
            "--trainer.logger={class_path: jointdiff.workflow.loggers.RunCSVLogger, init_args: {save_dir: unused}}"]
    spec = {"name": "tiny", "method": "grid",
            "command": ["${env}", "${interpreter}", "-m", "jointdiff.cli", "fit", *tiny, "${args}"],
            "parameters": {"model.init_args.classifier_weight": {"values": [0.001, 0.01]}}}
    path = _write(tmp_path, spec)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("WANDB_RUN_ID")
    out = tmp_path / "sweep_out"
    runs = run_sweep(str(path), out=str(out))  # what `jointdiff sweep run FILE --out DIR` does, in this process
    assert [r["returncode"] for r in runs] == [0, 0]
    record = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["finished", "finished"]
    for run, weight in zip(record["runs"], [0.001, 0.01], strict=True):
        folder = Path(run["run_dir"])
        assert folder == out / f"run_{run['index']:03d}"
        assert run["params"] == {"model.init_args.classifier_weight": weight}
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["fit"]["global_step"] == 2 and 0.0 <= metrics["test"]["test/acc"] <= 1.0
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["model"]["init_args"]["classifier_weight"] == weight
        assert config["trainer"]["default_root_dir"] == str(folder)


def test_command_line_rejects_unknown_macros(tmp_path):
    spec = {"method": "grid", "command": ["x", "${nope}"], "parameters": {"a": {"value": 1}}}
    spec = load_sweep(_write(tmp_path, spec))
    with pytest.raises(SweepError, match="nope"):
        command_line(spec, {"a": 1})


def test_one_alpha_run_writes_its_row_and_logs_it_to_an_offline_wandb_run(tmp_path, monkeypatch):
    """`jointdiff sweep alpha` (one run of experiments/sweeps/alpha.yaml) on a tiny joint model with a noisy
    classifier: alpha-sweep's row for that α in the run folder, and a W&B run (offline) holding it."""
    import lightning as L
    import torch
    from conftest import TINY_MODEL

    from jointdiff.models import JointDiffusion
    from jointdiff.workflow.sweep_jobs import alpha as alpha_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_ID")
    L.seed_everything(0)
    model = JointDiffusion(image_size=8, channels=1, num_classes=2, noisy_classifier="replace", channel_mult=[1, 2],
                           **{**TINY_MODEL, "diffusion_steps": 10})
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(8) % 2), batch_size=4)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(model, train_dataloaders=data)
    trainer.save_checkpoint(tmp_path / "joint_noisy.ckpt")

    out = tmp_path / "run_000"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads fighting over a shared CPU made this 10x slower
    try:
        row = alpha_run(checkpoint=str(tmp_path / "joint_noisy.ckpt"), alpha=5.0, num_per_class=2, classes=[1],
                        output=str(out), steps=5)  # the default 25 respaced steps exceed this model's T = 10
    finally:
        torch.set_num_threads(threads)
    assert row["alpha"] == 5.0 and row["num"] == 2 and 0.0 <= row["own_head_hit_rate"] <= 1.0
    saved = json.loads((out / "alpha_sweep.json").read_text())
    assert [r["alpha"] for r in saved["rows"]] == [5.0]
    (wandb_run,) = (out / "wandb").glob("offline-run-*")
    assert any(wandb_run.glob("run-*.wandb"))
