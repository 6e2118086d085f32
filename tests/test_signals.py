"""Stopped runs say so: SIGTERM makes `jointdiff fit` exit non-zero and record "interrupted"; a
SIGKILLed run reads as "stale"; the sweep runner records interrupted runs, skips finished ones and re-runs the others,
resuming a fit from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_FIT_ARGS
from fixtures import write_idx  # tests/ is on sys.path (rootdir conftest, no package)

from jointdiff.runs import attempt_status
from jointdiff.workflow.launch import Job, run_locally

REPO = Path(__file__).resolve().parents[1]

TINY = [*TINY_FIT_ARGS, "--trainer.enable_progress_bar=false"]


def _env(tmp_path: Path, run_dir: Path) -> dict:
    write_idx(tmp_path / "data" / "fashion-mnist", n_train=200, n_test=20)
    env = {**os.environ, "JOINTDIFF_DATA_ROOT": str(tmp_path / "data"), "JOINTDIFF_RUN_DIR": str(run_dir),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("WANDB_RUN_ID", None)
    return env


def _rows(metrics_csv: Path) -> int:
    return max(0, len(metrics_csv.read_text().splitlines()) - 1) if metrics_csv.exists() else 0


@pytest.mark.parametrize(("sig", "code", "reason"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                     (signal.SIGINT, 1, "KeyboardInterrupt")], ids=["TERM", "INT"])
def test_a_signal_exits_non_zero_and_records_interrupted(tmp_path, sig, code, reason):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "jointdiff.cli", "fit", *TINY, "--trainer.max_steps=100000"],
                            cwd=REPO, env=_env(tmp_path, run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 180
    while _rows(run_dir / "metrics.csv") < 2:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no training steps logged within 180 s"
        time.sleep(0.2)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out[-3000:]
    attempt = json.loads((run_dir / "run.json").read_text())["attempts"][-1]
    assert attempt["status"] == "interrupted" and reason in attempt["reason"]
    assert attempt_status(attempt) == "interrupted"


def test_a_running_attempt_whose_process_is_gone_is_stale():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    assert attempt_status({"status": "running", "host": here, "pid": dead.pid}) == "stale"
    assert attempt_status({"status": "running", "host": here, "pid": os.getpid()}) == "running"
    assert attempt_status({"status": "running", "host": "another-node", "pid": dead.pid}) == "running"


def _fake_jointdiff(tmp_path: Path) -> Path:
    """A `jointdiff` that records its arguments in $LOG and exits with $RC (default 0)."""
    path = tmp_path / "bin" / "jointdiff"
    path.parent.mkdir()
    path.write_text(f"#!{sys.executable}\nimport os, sys\n"
                    "open(os.environ['LOG'], 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
                    "sys.exit(int(os.environ.get('RC', '0')))\n")
    path.chmod(0o755)
    return path


def test_sweep_rerun_skips_finished_and_resumes_interrupted_and_stale_runs(tmp_path):
    fake = _fake_jointdiff(tmp_path)
    log = tmp_path / "log.txt"
    jobs = [Job(f"s/run_{i}", [str(fake), "fit", f"--x={i}"], tmp_path / f"run_{i}", {"LOG": str(log)})
            for i in range(3)]
    manifest = tmp_path / "sweep.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # an earlier invocation: run 0 finished, run 1 was interrupted, run 2's runner was SIGKILLed mid-run
    earlier = [{"status": "finished", "returncode": 0}, {"status": "interrupted", "returncode": 143},
               {"status": "running", "host": socket.gethostname(), "pid": dead.pid}]
    runs = [{"index": i, "name": j.name, "params": {}, "argv": j.argv, "env": j.env, "run_dir": str(j.run_dir), **e}
            for i, (j, e) in enumerate(zip(jobs, earlier, strict=True))]
    manifest.write_text(json.dumps({"runs": runs}))
    (tmp_path / "run_1" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run_1" / "checkpoints" / "last.ckpt").write_bytes(b"x")

    result = run_locally(jobs, manifest, {})
    assert [r["status"] for r in result] == ["finished"] * 3
    lines = log.read_text().splitlines()
    root = "--trainer.default_root_dir={}"  # the runner adds each fit's run folder
    assert lines == [f"fit --x=1 {root.format(tmp_path / 'run_1')} "
                     f"--ckpt_path={tmp_path / 'run_1' / 'checkpoints' / 'last.ckpt'}",
                     f"fit --x=2 {root.format(tmp_path / 'run_2')}"]


def test_sweep_records_a_run_stopped_by_a_signal_as_interrupted(tmp_path):
    job = Job("s/run_0", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"],
              tmp_path / "run_0")
    result = run_locally([job], tmp_path / "sweep.json", {})
    assert result[0]["status"] == "interrupted" and result[0]["returncode"] == -15


def test_sigterm_to_the_sweep_runner_interrupts_the_run_and_exits_143(tmp_path):
    script = (
        "import sys\nfrom pathlib import Path\nfrom jointdiff.workflow.launch import Job, run_locally\n"
        f"out = Path({str(tmp_path)!r})\n"
        "job = Job('s/run_0', [sys.executable, '-c', 'import time; time.sleep(120)'], out / 'run_0')\n"
        "run_locally([job], out / 'sweep.json', {})\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    manifest = tmp_path / "sweep.json"
    deadline = time.time() + 60
    while not (manifest.is_file() and json.loads(manifest.read_text())["runs"][0]["status"] == "running"):
        assert runner.poll() is None and time.time() < deadline
        time.sleep(0.1)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=60) == 143
    assert json.loads(manifest.read_text())["runs"][0]["status"] == "interrupted"
