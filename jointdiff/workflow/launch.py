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
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from jointdiff.files import atomic_write, atomic_write_json
from jointdiff.runs import RUN_DIR_ENV, attempt_status, check_one_line
from jointdiff.workflow.sweeps import fit_args

SLURM_ARRAY_TEMPLATE = "experiments/slurm/array.sbatch"


@dataclass
class Job:
    name: str
    argv: list[str]
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    set_run_dir: bool = True  # False for commands that place their own runs (jointdiff adapt)

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        if self.set_run_dir:
            self.env = {RUN_DIR_ENV: str(self.run_dir), **self.env}
        if fit_args(self.argv) is not None and not any(a.startswith("--trainer.default_root_dir") for a in self.argv):
            self.argv = [*self.argv, f"--trainer.default_root_dir={self.run_dir}"]

    def shell(self) -> str:
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items()) + " " + shlex.join(self.argv)


# exit statuses of a run stopped by SIGTERM/SIGINT/SIGKILL: 128 + the signal (a shell, the jointdiff CLI on SIGTERM)
# or minus the signal (how Python reports a child killed by it)
INTERRUPTED_RETURNCODES = frozenset({128 + 15, 128 + 2, 128 + 9, -15, -2, -9})


def run_status(returncode: int) -> str:
    if returncode == 0:
        return "finished"
    return "interrupted" if returncode in INTERRUPTED_RETURNCODES else "failed"


def _record(jobs: list[Job], results: dict[int, dict], path: Path, meta: dict) -> None:
    runs = []
    for i, job in enumerate(jobs):
        runs.append({"index": i, "name": job.name, "params": job.params, "argv": job.argv, "env": job.env,
                     "run_dir": str(job.run_dir), **results.get(i, {"status": "pending"})})
    atomic_write_json({**meta, "runs": runs}, path)


def previous_results(jobs: list[Job], manifest: Path) -> dict[int, dict]:
    """What an earlier ``sweep run`` into the same folder recorded for each of ``jobs`` (same name and argv): its
    record, with a ``running`` run whose runner process is gone (killed) read as ``stale``."""
    if not manifest.is_file():
        return {}
    try:
        old = {r["index"]: r for r in json.loads(manifest.read_text()).get("runs", [])}
    except (ValueError, KeyError, TypeError):
        return {}
    found = {}
    for i, job in enumerate(jobs):
        r = old.get(i)
        if r is None or r.get("name") != job.name or r.get("argv") != job.argv:
            continue
        record = {k: v for k, v in r.items() if k not in ("index", "name", "params", "argv", "env", "run_dir")}
        if record.get("status") == "running":
            record["status"] = attempt_status({"status": "running", "host": record.get("host"),
                                               "pid": record.get("pid")})
        found[i] = record
    return found


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``last.ckpt`` under ``run_dir`` (wherever the run's ModelCheckpoint put it), if any."""
    found = sorted(Path(run_dir).rglob("last.ckpt"), key=lambda p: p.stat().st_mtime) if Path(run_dir).is_dir() else []
    return found[-1] if found else None


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated()


def run_locally(
    jobs: list[Job], manifest: Path, meta: dict, keep_going: bool = False, cwd: str | None = None
) -> list[dict]:
    """Run ``jobs`` in order (a failed run stops the rest unless ``keep_going``); returns the per-run records.

    Runs that an earlier invocation into the same ``manifest`` finished are skipped; interrupted, stale (their
    runner was killed), failed and pending runs run again, a ``jointdiff fit`` one resuming from the newest
    ``last.ckpt`` in its run folder (from scratch when there is none). A
    SIGTERM to this runner stops the current run (SIGTERM to it too), records it as interrupted, and exits 143."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(manifest.parent / f".{manifest.name}.lock"))  # released by the OS when the runner dies
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(f"another runner is running the jobs of {manifest} (it holds {lock.lock_file}): wait for it "
                         "to end or stop it, then run again; it resumes what is left") from None
    try:
        return _run_locked(jobs, manifest, meta, keep_going, cwd)
    finally:
        lock.release()


def _run_locked(jobs: list[Job], manifest: Path, meta: dict, keep_going: bool, cwd: str | None) -> list[dict]:
    earlier = previous_results(jobs, manifest)
    results = {i: r for i, r in earlier.items() if r.get("status") == "finished"}
    _record(jobs, results, manifest, meta)
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        for i, job in enumerate(jobs):
            if i in results:
                print(f"[{i + 1}/{len(jobs)}] {job.name}: finished earlier, skipped", flush=True)
                continue
            argv = list(job.argv)
            last = last_checkpoint(job.run_dir) if i in earlier and fit_args(argv) is not None else None
            if last is not None and not any(a.startswith("--ckpt_path") for a in argv):
                argv.append(f"--ckpt_path={last}")  # an interrupted or stale fit resumes from its last checkpoint
            print(f"[{i + 1}/{len(jobs)}] {job.name}: {job.shell()}", flush=True)
            start = time.perf_counter()
            # this interpreter's bin folder first, so `jointdiff` (and `python`) resolve to this environment
            path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
            proc = subprocess.Popen(argv, env={**os.environ, "PATH": path, **job.env}, cwd=cwd)
            results[i] = {"status": "running", "host": socket.gethostname(), "pid": os.getpid(), "argv_run": argv}
            _record(jobs, results, manifest, meta)
            try:
                returncode = proc.wait()
            except (_Terminated, KeyboardInterrupt):
                proc.terminate()
                proc.wait()
                results[i] = {"status": "interrupted", "returncode": proc.returncode, "argv_run": argv,
                              "seconds": round(time.perf_counter() - start, 1)}
                _record(jobs, results, manifest, meta)
                print(f"{job.name} interrupted; `sweep run` again to resume it", file=sys.stderr)
                sys.exit(128 + signal.SIGTERM)
            results[i] = {"status": run_status(returncode), "returncode": returncode, "argv_run": argv,
                          "seconds": round(time.perf_counter() - start, 1)}
            _record(jobs, results, manifest, meta)
            if returncode != 0 and not keep_going:
                print(f"{job.name} {results[i]['status']} (exit {returncode}); stopping (use --keep_going to "
                      "continue; `sweep run` again re-runs it)", file=sys.stderr)
                break
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
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
        check_one_line(str(job.run_dir), "the run folder")
        for arg in job.argv:
            check_one_line(arg, f"{job.name}: the argument")
        lines.append(f"{job.run_dir}\t{shlex.join(prefix + job.argv)}")
    commands = out / "commands.tsv"
    atomic_write(commands, lambda f: f.write("\n".join(lines) + "\n"), mode="w")
    _record(jobs, {}, out / "sweep.json", {**meta, "slurm_commands": str(commands)})
    limit = f"%{max_parallel}" if max_parallel else ""
    sbatch = (f"mkdir -p runs/slurm && sbatch --job-name={shlex.quote(name)} --array=0-{len(jobs) - 1}{limit} "
              f"{template} {shlex.quote(str(commands))}")
    return commands, sbatch
