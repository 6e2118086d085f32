"""Where a run lives and what it is called, stable across SLURM requeues (pure functions of the environment).

A SLURM job keeps its id when it is requeued, so the run key derived from it (``<array job>_<task>`` for array
tasks, as Lightning's requeue handler names them, else ``<job id>``) names the same run on every attempt. The SLURM
templates in ``experiments/slurm/`` export ``JOINTDIFF_RUN_DIR`` (the run folder) and pass it as
``trainer.default_root_dir`` too, so logs, checkpoints, ``metrics.json`` and Lightning's ``hpc_ckpt_*.ckpt`` share
one folder that every attempt finds again.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import string
from pathlib import Path

RUN_DIR_ENV = "JOINTDIFF_RUN_DIR"
WANDB_ID_FILE = "wandb_run_id"
RUN_RECORD = "run.json"  # one entry per attempt, written by jointdiff.callbacks.workflow.RunRecord


def slurm_run_key(env: dict[str, str] | None = None) -> str | None:
    """``"<array job>_<task>"`` for an array task, ``"<job id>"`` for a plain job, ``None`` outside a SLURM batch
    job (interactive ``bash``/``interactive`` sessions count as outside, as Lightning's ``SLURMEnvironment`` does)."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return env.get("SLURM_JOB_ID") or None


def run_dir_from_env(env: dict[str, str] | None = None) -> Path | None:
    """The run folder forced by ``$JOINTDIFF_RUN_DIR`` (set by the SLURM templates and the sweep runner)."""
    env = os.environ if env is None else env
    value = env.get(RUN_DIR_ENV)
    return Path(value) if value else None


def read_persisted_id(run_dir: Path | None) -> str | None:
    """The W&B run id an earlier attempt stored in ``run_dir``, if any."""
    if run_dir is None:
        return None
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        value = path.read_text().strip()
        return value or None
    return None


def persist_id(run_dir: Path, run_id: str) -> None:
    """Store the W&B run id in ``run_dir`` so that a later attempt (a requeue or a re-submission) reuses it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / WANDB_ID_FILE).write_text(run_id + "\n")


def wandb_run_id(explicit: str | None = None, run_dir: Path | None = None, env: dict[str, str] | None = None) -> str:
    """The W&B run id of this process, first match wins:

    1. ``explicit`` (the logger's ``id``);
    2. ``$WANDB_RUN_ID`` (set by ``wandb agent`` for every sweep run, or by the user to resume a run);
    3. the id stored in the run folder by an earlier attempt (survives re-submission under a new job id);
    4. derived from the SLURM job (``slurm-<cluster>-<run key>``), identical on every rank and every requeue;
    5. a fresh random id.
    """
    env = os.environ if env is None else env
    if explicit:
        return explicit
    if env.get("WANDB_RUN_ID"):
        return env["WANDB_RUN_ID"]
    persisted = read_persisted_id(run_dir)
    if persisted:
        return persisted
    key = slurm_run_key(env)
    if key:
        cluster = env.get("SLURM_CLUSTER_NAME")
        return f"slurm-{cluster}-{key}" if cluster else f"slurm-{key}"
    alphabet = string.ascii_lowercase + string.digits  # the format of wandb's own ids (8 characters)
    return "".join(secrets.choice(alphabet) for _ in range(8))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def attempt_status(attempt: dict) -> str:
    """An attempt's recorded status, with ``running`` read as ``stale`` when it was recorded on this host by a
    process that no longer exists (a SIGKILLed run never records its end)."""
    status = attempt.get("status", "running")
    if status == "running" and attempt.get("host") == socket.gethostname() and attempt.get("pid"):
        return "running" if pid_alive(int(attempt["pid"])) else "stale"
    return status


def read_json(path: Path, unreadable: list[Path] | None = None) -> dict | None:
    """The JSON object in ``path``, or ``None`` (recorded in ``unreadable``) when it is missing, truncated,
    malformed or not an object: a report over many folders skips such a file instead of aborting."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict):
        if unreadable is not None:
            unreadable.append(Path(path))
        return None
    return data


def run_failure(folder: Path, metrics: dict | None = None) -> str | None:
    """Why the run in ``folder`` is not a result, or ``None`` when it is one: its last attempt failed (a diverged
    run records the step and loss), or its metrics hold non-finite values (written as ``null``)."""
    record = read_json(Path(folder) / RUN_RECORD) or {}
    attempts = record.get("attempts") or []
    if attempts and attempts[-1].get("status") == "failed":
        return attempts[-1].get("reason") or "the last attempt failed"
    metrics = read_json(Path(folder) / "metrics.json") if metrics is None else metrics
    for stage in ("fit", "test"):
        values = (metrics or {}).get(stage) or {}
        bad = sorted(k for k, v in values.items() if v is None and k.startswith(("train/", "val/", "test/")))
        if bad:
            return f"non-finite {stage} metrics: {', '.join(bad)}"
    return None


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")


def check_safe_name(value: str, what: str) -> str:
    """``value`` if it is a safe folder name (letters, digits and ``. _ + = -``, not starting with a dot, no ``/``):
    a name taken from a config must never place files outside the folder meant for them (``../../x``)."""
    if not SAFE_NAME.fullmatch(str(value)):
        raise ValueError(f"{what} {value!r} is not a safe folder name: use letters, digits and . _ + = - only "
                         "(no '/', no leading '.', at most 128 characters)")
    return str(value)


CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def check_one_line(value: str, what: str) -> str:
    """``value`` unless it holds a control character (newline, tab, …), which would split a line-based job file."""
    found = CONTROL_CHARACTERS.search(str(value))
    if found:
        raise ValueError(f"{what} {value!r} contains the control character {found.group()!r}: command-line values "
                         "must be one line of printable text")
    return str(value)
