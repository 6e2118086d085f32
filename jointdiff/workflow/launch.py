"""Run a list of commands one after another on this machine, or write them for a SLURM array job.

Each command runs in its own run folder (``$JOINTDIFF_RUN_DIR``, which the project's loggers use as their folder;
a ``jointdiff fit`` command also gets it as ``--trainer.default_root_dir``), with its output streamed to the
console. ``<out>/<manifest>`` records, per run, the parameters, the exact argv, the folder, the exit status and the
wall time, so ``jointdiff report`` can pair each run's metrics with its parameters.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from jointdiff.callbacks.logging import atomic_write_json
from jointdiff.workflow.runs import RUN_DIR_ENV
from jointdiff.workflow.sweeps import fit_args

SLURM_ARRAY_TEMPLATE = "experiments/slurm/array.sbatch"


@dataclass
class Job:
    name: str
    argv: list[str]
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    set_run_dir: bool = True  # False for commands that place their own runs (experiments/domain_adaptation.py)

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        if self.set_run_dir:
            self.env = {RUN_DIR_ENV: str(self.run_dir), **self.env}
        if fit_args(self.argv) is not None and not any(a.startswith("--trainer.default_root_dir") for a in self.argv):
            self.argv = [*self.argv, f"--trainer.default_root_dir={self.run_dir}"]

    def shell(self) -> str:
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items()) + " " + shlex.join(self.argv)


def _record(jobs: list[Job], results: dict[int, dict], path: Path, meta: dict) -> None:
    runs = []
    for i, job in enumerate(jobs):
        runs.append({"index": i, "name": job.name, "params": job.params, "argv": job.argv, "env": job.env,
                     "run_dir": str(job.run_dir), **results.get(i, {"status": "pending"})})
    atomic_write_json({**meta, "runs": runs}, path)


def run_locally(
    jobs: list[Job], manifest: Path, meta: dict, keep_going: bool = False, cwd: str | None = None
) -> list[dict]:
    """Run ``jobs`` in order (a failed run stops the rest unless ``keep_going``); returns the per-run records."""
    results: dict[int, dict] = {}
    _record(jobs, results, manifest, meta)
    for i, job in enumerate(jobs):
        print(f"[{i + 1}/{len(jobs)}] {job.name}: {job.shell()}", flush=True)
        start = time.perf_counter()
        # this interpreter's bin folder first, so `jointdiff` (and `python`) resolve to this environment
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        proc = subprocess.run(job.argv, env={**os.environ, "PATH": path, **job.env}, cwd=cwd)
        results[i] = {"status": "finished" if proc.returncode == 0 else "failed", "returncode": proc.returncode,
                      "seconds": round(time.perf_counter() - start, 1)}
        _record(jobs, results, manifest, meta)
        if proc.returncode != 0 and not keep_going:
            print(f"{job.name} failed (exit {proc.returncode}); stopping (use --keep_going to continue)",
                  file=sys.stderr)
            break
    return json.loads(manifest.read_text())["runs"]


def write_slurm_array(jobs: list[Job], out: Path, meta: dict, name: str, max_parallel: int | None = None,
                      template: str = SLURM_ARRAY_TEMPLATE) -> tuple[Path, str]:
    """Write ``<out>/commands.tsv`` (run folder, TAB, shell-quoted argv; one line per array task) and the manifest;
    return the file and the ``sbatch`` line that submits the array with ``template``."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for job in jobs:
        extra_env = {k: v for k, v in job.env.items() if k != RUN_DIR_ENV}
        prefix = ["env", *(f"{k}={v}" for k, v in extra_env.items())] if extra_env else []
        lines.append(f"{job.run_dir}\t{shlex.join(prefix + job.argv)}")
    commands = out / "commands.tsv"
    commands.write_text("\n".join(lines) + "\n")
    _record(jobs, {}, out / "sweep.json", {**meta, "slurm_commands": str(commands)})
    limit = f"%{max_parallel}" if max_parallel else ""
    sbatch = (f"mkdir -p runs/slurm && sbatch --job-name={shlex.quote(name)} --array=0-{len(jobs) - 1}{limit} "
              f"{template} {shlex.quote(str(commands))}")
    return commands, sbatch
