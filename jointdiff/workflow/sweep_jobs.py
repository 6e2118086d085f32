"""A W&B sweep file without a W&B server: expand it, run it here, submit it to SLURM, or run one α of the α-sweep
sweep (:func:`expand`, :func:`run`, :func:`slurm`, :func:`alpha`); the command is ``jointdiff sweep`` (usage in
:mod:`jointdiff.commands.sweep`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from jointdiff.data.base import ImageDataModule
from jointdiff.diffusion.ddim import RESPACED_ETA, SWEEP_STEPS
from jointdiff.runs import RUN_DIR_ENV, check_safe_name
from jointdiff.workflow.launch import SLURM_ARRAY_TEMPLATE, Job, run_locally, write_slurm_array
from jointdiff.workflow.sweeps import expand as expand_sweep
from jointdiff.workflow.sweeps import load_sweep


def _jobs(sweep: str, out: str | None, count: int | None, seed: int) -> tuple[list[Job], Path, dict, str]:
    spec = load_sweep(sweep)
    name = check_safe_name(str(spec.get("name") or Path(sweep).stem), f"{sweep}: the sweep name")
    folder = Path(out or f"runs/sweeps/{name}")
    runs = expand_sweep(sweep, count, seed)
    jobs = [Job(f"{name}/run_{r.index:03d}", r.argv, folder / f"run_{r.index:03d}", {"WANDB_RUN_GROUP": name},
                r.params) for r in runs]
    meta = {"sweep": str(sweep), "name": name, "method": spec["method"], "metric": spec.get("metric"),
            "seed": seed, "count": len(jobs)}
    return jobs, folder, meta, name


def expand(sweep: str, count: int | None = None, seed: int = 0, json_output: bool = False) -> list[dict]:
    """Print the command line of every run.

    Args:
        sweep: a W&B sweep YAML file (method grid or random).
        count: number of runs (random search; truncates a grid).
        seed: seed of the random draws.
        json_output: print one JSON object per run (parameters and argv) instead of shell lines.
    """
    runs = expand_sweep(sweep, count, seed)
    for r in runs:
        print(json.dumps({"index": r.index, "params": r.params, "argv": r.argv}) if json_output else r.shell())
    return [{"index": r.index, "params": r.params, "argv": r.argv} for r in runs]


def run(sweep: str, count: int | None = None, seed: int = 0, out: str | None = None, dry_run: bool = False,
        keep_going: bool = False) -> list[dict]:
    """Run the sweep's runs on this machine, one after another.

    Args:
        sweep: a W&B sweep YAML file.
        count: number of runs (random search; truncates a grid).
        seed: seed of the random draws.
        out: folder of the runs (default ``runs/sweeps/<sweep name>``); ``<out>/sweep.json`` records them.
        dry_run: only print what would run.
        keep_going: continue after a failed run.
    """
    jobs, folder, meta, _ = _jobs(sweep, out, count, seed)
    if dry_run:
        for job in jobs:
            print(job.shell())
        return []
    return run_locally(jobs, folder / "sweep.json", meta, keep_going)


def slurm(sweep: str, count: int | None = None, seed: int = 0, out: str | None = None,
          max_parallel: int | None = None, template: str = SLURM_ARRAY_TEMPLATE) -> str:
    """Write a SLURM array job of the sweep (one task per run) and print the ``sbatch`` line that submits it.

    Args:
        sweep: a W&B sweep YAML file.
        count: number of runs (random search; truncates a grid).
        seed: seed of the random draws.
        out: folder of the runs and of ``commands.tsv`` (default ``runs/sweeps/<sweep name>``).
        max_parallel: at most this many tasks at once (``--array=0-N%K``).
        template: the array sbatch script (reads line ``$SLURM_ARRAY_TASK_ID`` of ``commands.tsv``).
    """
    jobs, folder, meta, name = _jobs(sweep, out, count, seed)
    commands, sbatch = write_slurm_array(jobs, folder, meta, name, max_parallel, template)
    print(f"wrote {len(jobs)} commands to {commands}; submit with\n  {sbatch}")
    return sbatch


def alpha(
    *,
    checkpoint: str,
    alpha: float = 200.0,
    num_per_class: int = 100,
    classes: list[int] | None = None,
    judge: str | None = None,
    features: str | None = None,
    data: ImageDataModule | None = None,
    split: str = "test",
    max_real: int | None = None,
    direction: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    weights: str = "model",
    device: str = "cpu",
    output: str | None = None,
    project: str = "jointdiff",
    wandb: bool = True,
    steps: int | Literal["all"] = SWEEP_STEPS,
    eta: float = RESPACED_ETA,
) -> dict:
    """One run of an α sweep (experiments/sweeps/alpha.yaml): ``jointdiff alpha-sweep`` at a single α, its row
    (FID, PRD precision/recall, class hit rates) logged to a W&B run. α is a sampling parameter, not a training one,
    so this sweep's command is not ``jointdiff fit``; the trained model comes from ``--checkpoint``.

    Args:
        checkpoint: a JointDiffusion trained with noisy classifiers (configs/paper/models/joint_noisy.yaml).
        alpha: the joint sampler's step size α.
        num_per_class, classes, judge, features, data, split, max_real, direction, seed, batch_size, weights,
            device, steps, eta: as ``jointdiff alpha-sweep`` (``--steps all``: the full chain).
        output: folder of the results (default ``$JOINTDIFF_RUN_DIR``, else ``runs/sweeps/alpha/alpha_<α>``).
        project: W&B project (the agent's own project and run id take precedence).
        wandb: log the row to W&B (offline with ``WANDB_MODE=offline``).
    """
    import os

    from jointdiff.sampling.alpha_sweep import alpha_sweep

    folder = Path(output or os.environ.get(RUN_DIR_ENV) or f"runs/sweeps/alpha/alpha_{alpha:g}")
    (row,) = alpha_sweep(checkpoint=checkpoint, output=str(folder), alphas=[alpha], num_per_class=num_per_class,
                         classes=classes, judge=judge, features=features, data=data, split=split, max_real=max_real,
                         direction=direction, seed=seed, batch_size=batch_size, weights=weights, device=device,
                         progress=True, steps=steps, eta=eta)
    if wandb:
        import wandb as wb

        run = wb.init(project=project, dir=str(folder), group=os.environ.get("WANDB_RUN_GROUP"),
                      config={"checkpoint": checkpoint, "alpha": alpha, "num_per_class": num_per_class,
                              "features": features, "judge": judge, "direction": direction, "seed": seed,
                              "steps": steps, "eta": eta})
        run.log({k: v for k, v in row.items() if isinstance(v, (int, float))})
        grids = sorted((folder / "grids").glob("*.png"))
        if grids:
            run.log({"samples": [wb.Image(str(g)) for g in grids[:10]]})
        run.finish()
    return row
