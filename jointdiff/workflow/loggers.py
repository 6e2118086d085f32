"""Loggers whose run folder and W&B run id stay the same across SLURM requeues (see :mod:`jointdiff.runs`).

``RunCSVLogger`` is Lightning's ``CSVLogger`` plus two things: its folder is ``$JOINTDIFF_RUN_DIR`` when that is set
(else ``save_dir/name/version`` with ``version`` defaulting to the SLURM run key inside a SLURM job), and reopening
an existing folder keeps the rows of ``metrics.csv`` the earlier attempts wrote (Lightning's writer deletes them).
It comes first in ``trainer.logger``, so it defines ``trainer.log_dir``: the folder of ``config.yaml``,
``metrics.json``, ``run.json`` and ``checkpoints/``.

``WandbRunLogger`` is Lightning's ``WandbLogger`` with the run id chosen by
:func:`~jointdiff.runs.wandb_run_id` (``resume="allow"``, so a requeued attempt continues the same W&B run),
stored in the run folder when one is known.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from jointdiff.runs import check_safe_name, persist_id, run_dir_from_env, slurm_run_key, wandb_run_id


class _ResumingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted: its header is read
    back so that new rows (and new columns) are merged with the earlier attempts' rows. Steps logged after the last
    checkpoint of an interrupted attempt appear twice (once per attempt); readers keep the last row of a step."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


class RunCSVLogger(CSVLogger):
    """CSV logger with a requeue-stable folder (module docstring).

    The folder is ``save_dir/group/name/version``, unless ``$JOINTDIFF_RUN_DIR`` names it. In the paper
    compositions each layer sets one part: the budget preset ``save_dir`` (``runs/paper`` or ``runs/quick``), the
    dataset fragment ``group`` (``cifar10``), the method fragment ``name`` (``joint``).

    Args:
        save_dir, group, name: parts of the folder (``group=None`` leaves it out).
        version: ``None``: the SLURM run key inside a SLURM job (``12345`` or ``12345_7``), else the next
            ``version_N``. A string is used as the folder name (e.g. ``seed0``).
        prefix, flush_logs_every_n_steps: as ``CSVLogger``.
    """

    def __init__(
        self,
        save_dir: str = "runs",
        name: str = "run",
        version: int | str | None = None,
        group: str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ):
        forced = run_dir_from_env()
        if forced is not None:  # save_dir/name/version = <parent>/""/<basename>: exactly the forced folder
            save_dir, name, version = str(forced.parent), "", forced.name
        else:
            check_safe_name(name, "the run name")
            if group:
                save_dir = os.path.join(save_dir, check_safe_name(group, "the run group"))
            if version is None:
                version = slurm_run_key()
            elif isinstance(version, str):
                check_safe_name(version, "the run version")
        super().__init__(save_dir, name, version, prefix, flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir)
        return self._experiment


class WandbRunLogger(WandbLogger):
    """W&B logger whose run id survives requeues and re-submissions (module docstring).

    Args:
        project, entity, group, tags, notes, job_type: as ``wandb.init``.
        name: display name; ``None`` lets :class:`~jointdiff.callbacks.workflow.WandbResolvedConfig` name the run
            after its local folder (``runs/.../version_0``), so the two are easy to match.
        id: a fixed run id; ``None`` chooses one by :func:`~jointdiff.runs.wandb_run_id`.
        save_dir: where wandb keeps its local files; ``None``: ``$JOINTDIFF_RUN_DIR`` when set, else ``runs``.
        offline: log locally only (``WANDB_MODE=offline`` does the same); ``wandb sync`` uploads later.
        log_model: upload checkpoints as W&B artifacts (``False``, ``True`` at the end, or ``"all"``).
    """

    def __init__(
        self,
        project: str = "jointdiff",
        name: str | None = None,
        id: str | None = None,
        save_dir: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        job_type: str | None = None,
        offline: bool = False,
        log_model: bool | str = False,
    ):
        run_dir = run_dir_from_env()
        run_id = wandb_run_id(id, run_dir)
        if run_dir is not None:
            self._persist(run_dir, run_id)
        save_dir = save_dir or (str(run_dir) if run_dir is not None else "runs")
        extra = {k: v for k, v in dict(entity=entity, group=group, tags=tags, notes=notes, job_type=job_type).items()
                 if v is not None}
        super().__init__(name=name, save_dir=save_dir, id=run_id, project=project, offline=offline,
                         log_model=log_model, **extra)
        self.named_by_user = name is not None
        rank_zero_info(f"W&B run id {run_id} (project {project})")

    @property
    def experiment(self):
        if self._experiment is None and self._save_dir:  # wandb needs its folder to exist; create it only now
            Path(self._save_dir).mkdir(parents=True, exist_ok=True)
        return super().experiment

    @staticmethod
    @rank_zero_only
    def _persist(run_dir: Path, run_id: str) -> None:
        persist_id(run_dir, run_id)
