"""A simulated SLURM requeue of a running CPU fit, through the real launcher (experiments/slurm/fit.sh).

The job runs ``fit.sh`` with the environment SLURM gives a batch job, a stand-in ``srun`` (runs its command, after
noting its PID) and a stand-in ``scontrol`` (records its arguments and, like SLURM's requeue of a running job,
terminates the job's process with SIGTERM). SIGUSR1 is sent to the training process as ``--signal=SIGUSR1@90`` would;
Lightning's own handler then writes ``hpc_ckpt_1.ckpt`` and calls ``scontrol requeue``. The second attempt is the
same command with ``SLURM_RESTART_COUNT=1`` (and a budget a few steps past the checkpoint, to keep the test short):
it must resume from the HPC checkpoint at exactly its step, in the same run folder, with the same W&B run id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_FIT_ARGS
from fixtures import write_idx  # tests/ is on sys.path (rootdir conftest, no package)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def slurm_job(tmp_path):
    """A submit folder (configs linked in), stand-in srun/scontrol, and the SLURM environment of job 4242."""
    write_idx(tmp_path / "data" / "fashion-mnist", n_train=200, n_test=20)  # the real idx format, small
    (tmp_path / "configs").symlink_to(REPO / "configs")
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    fake = tmp_path / "bin"
    fake.mkdir()
    _script(fake / "srun", 'echo $$ > "$FAKE_SRUN_PID"\n'
                           'while [ $# -gt 0 ]; do case "$1" in -*) shift;; *) break;; esac; done\nexec "$@"\n')
    _script(fake / "scontrol", 'echo "$*" >> "$FAKE_SCONTROL_LOG"\nkill -TERM "$PPID"\n')
    preset = yaml.safe_load((REPO / "configs/base/slurm.yaml").read_text())
    preset["trainer"].update(accelerator="cpu", strategy="auto")  # the real preset, minus the GPU
    (tmp_path / "slurm_cpu.yaml").write_text(yaml.safe_dump(preset))
    env = {
        **os.environ,
        "PATH": f"{fake}:{BIN}:{os.environ['PATH']}",
        "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "requeue-test",
        "SLURM_CLUSTER_NAME": "testcluster", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1",
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
        "SLURM_RESTART_COUNT": "0",
        "JOINTDIFF_DATA_ROOT": str(tmp_path / "data"), "JOINTDIFF_WANDB": "1",
        "JOINTDIFF_SLURM_PRESET": str(tmp_path / "slurm_cpu.yaml"),
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
        "FAKE_SRUN_PID": str(tmp_path / "srun.pid"), "FAKE_SCONTROL_LOG": str(tmp_path / "scontrol.log"),
    }
    env.pop("JOINTDIFF_RUN_DIR", None)
    env.pop("WANDB_RUN_ID", None)
    return tmp_path, env


def _rows(metrics_csv: Path) -> int:
    return max(0, len(metrics_csv.read_text().splitlines()) - 1) if metrics_csv.exists() else 0


def test_sigusr1_requeue_resumes_from_hpc_checkpoint_with_same_step_folder_and_wandb_run(slurm_job):
    submit, env = slurm_job
    run_dir = submit / "runs/slurm/requeue-test/4242"  # fit.sh's default folder for job 4242
    launcher = [str(REPO / "experiments/slurm/fit.sh"), *TINY_FIT_ARGS]

    # attempt 1: train until a few steps are logged, then SIGUSR1 to the training process (as SLURM does)
    first = subprocess.Popen([*launcher, "--trainer.max_steps=100000"], cwd=submit, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while _rows(run_dir / "metrics.csv") < 3:
        assert first.poll() is None, "the first attempt ended before it was signalled:\n" + first.stdout.read()
        assert time.time() < deadline, "no training steps logged within 120 s"
        time.sleep(0.2)
    os.kill(int((submit / "srun.pid").read_text()), signal.SIGUSR1)
    out1, _ = first.communicate(timeout=120)

    assert (submit / "scontrol.log").read_text().split() == ["requeue", "4242"], out1
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), out1
    saved_step = torch.load(hpc, map_location="cpu", weights_only=True)["global_step"]
    assert saved_step >= 1

    # attempt 2: the requeued job (same job id), a few steps past the checkpoint
    env2 = {**env, "SLURM_RESTART_COUNT": "1"}
    second = subprocess.run([*launcher, f"--trainer.max_steps={saved_step + 3}"], cwd=submit, env=env2,
                            capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]

    record = json.loads((run_dir / "run.json").read_text())
    a1, a2 = record["attempts"]
    assert a1["start_step"] == 0 and a1["status"].startswith("interrupted") and a1["slurm"]["restart_count"] == 0
    assert submit / a2["resumed_from"] == hpc and a2["start_step"] == saved_step
    assert a2["status"] == "finished" and a2["end_step"] == saved_step + 3 and a2["slurm"]["restart_count"] == 1
    assert json.loads((run_dir / "metrics.json").read_text())["fit"]["global_step"] == saved_step + 3

    run_id = "slurm-testcluster-4242"
    assert (run_dir / "wandb_run_id").read_text().strip() == run_id and record["wandb"]["id"] == run_id
    offline_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(p.name.endswith(run_id) for p in offline_runs)  # one W&B run, 2 attempts
    resolved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert resolved["model"]["class_path"] == "jointdiff.models.JointDiffusion"
    assert resolved["trainer"]["default_root_dir"] == "runs/slurm/requeue-test/4242"

    header, *rows = (run_dir / "metrics.csv").read_text().splitlines()
    step_col = header.split(",").index("step")
    logged = {int(r.split(",")[step_col]) for r in rows if r.split(",")[step_col]}
    assert min(logged) < saved_step and max(logged) >= saved_step  # both attempts' rows, in one folder
    assert [p.name for p in run_dir.parent.iterdir()] == ["4242"]  # no second folder was created


# the pure rules behind the folder and the W&B id --------------------------------------------------------------
def test_slurm_run_key_names_array_tasks_like_lightnings_requeue():
    from jointdiff.runs import slurm_run_key

    assert slurm_run_key({"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "x"}) == "42"
    assert slurm_run_key({"SLURM_JOB_ID": "99", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3"}) == "7_3"
    assert slurm_run_key({"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "interactive"}) is None  # as SLURMEnvironment
    assert slurm_run_key({}) is None


def test_wandb_run_id_precedence(tmp_path):
    from jointdiff.runs import persist_id, wandb_run_id

    slurm = {"SLURM_JOB_ID": "42", "SLURM_CLUSTER_NAME": "c"}
    assert wandb_run_id(None, None, slurm) == "slurm-c-42"
    persist_id(tmp_path, "stored")
    assert wandb_run_id(None, tmp_path, slurm) == "stored"  # a re-submitted job continues the stored run
    assert wandb_run_id(None, tmp_path, {**slurm, "WANDB_RUN_ID": "agent"}) == "agent"  # the W&B agent's id wins
    assert wandb_run_id("explicit", tmp_path, {**slurm, "WANDB_RUN_ID": "agent"}) == "explicit"
    fresh = {wandb_run_id(None, None, {}) for _ in range(3)}
    assert len(fresh) == 3  # outside SLURM and without a stored id: a new random id each time


def test_run_csv_logger_folder(tmp_path, monkeypatch):
    from jointdiff.workflow.loggers import RunCSVLogger

    for key in ("JOINTDIFF_RUN_DIR", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert RunCSVLogger(str(tmp_path), "joint", group="cifar10").log_dir == str(tmp_path / "cifar10/joint/version_0")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert RunCSVLogger(str(tmp_path), "joint").log_dir == str(tmp_path / "joint/42")
    monkeypatch.setenv("JOINTDIFF_RUN_DIR", str(tmp_path / "forced"))
    logger = RunCSVLogger(str(tmp_path), "joint", group="cifar10")
    assert logger.log_dir == str(tmp_path / "forced")
