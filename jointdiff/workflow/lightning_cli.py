"""The project's LightningCLI: every model and DataModule of the package behind ``fit/validate/test/predict``, with
the data→model argument links, ``--test_after_fit``, and the checks that run before any data is read.

The console entry point (``jointdiff``, :mod:`jointdiff.cli`) and the composition check
(:mod:`jointdiff.workflow.compose`) both build it through :func:`run_lightning_cli`.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

import jointdiff.data  # noqa: F401  (registers DataModules for short class names)
import jointdiff.models  # noqa: F401  (registers models for short class names)
from jointdiff.callbacks.finite import StopOnNonFinite
from jointdiff.callbacks.logging import run_dir
from jointdiff.data.base import ImageDataModule
from jointdiff.models.checkpoints import (
    check_checkpoint_fits,
    check_finite_state,
    check_model_class,
    check_same_class,
    read_checkpoint,
    upgrade_checkpoint,
)
from jointdiff.workflow import checkpoint_io

LINKED_DATA_KEYS = ("image_size", "channels", "num_classes", "task")
LIMIT_KEYS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")
CKPT_PATH_KEYWORDS = ("last", "best", "hpc", "registry")  # Lightning's special --ckpt_path values


class JointDiffCLI(LightningCLI):
    """LightningCLI with the data→model links, ``--test_after_fit``, and checks that run before any data is read:
    no linked key set by hand to another value, the checkpoint given with ``--ckpt_path`` readable and fitting the
    configured model. Every trainer saves checkpoints atomically (:mod:`jointdiff.workflow.checkpoint_io`)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in LINKED_DATA_KEYS:
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after `fit`, run `test` on the final (last-step) weights in the same run directory",
        )
        parser.add_argument(
            "--restart",
            type=bool,
            default=False,
            help="`fit` without --ckpt_path in a run folder that already holds checkpoints: start over from step 0 "
            "(overwriting them) instead of refusing",
        )

    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].get("trainer") or {}
        for key in LIMIT_KEYS:
            if trainer.get(key) == 1 and isinstance(trainer.get(key), float):
                rank_zero_warn(f"trainer.{key}=1 is read as 1.0, i.e. ALL batches (Lightning treats floats as "
                               "fractions and the command line cannot pass the int 1); for a few batches use 2 or more")

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        # runs after the model and DataModule are built, before the trainer prints anything or reads any data
        self._reject_hand_set_links()
        self._check_ckpt_path()
        trainer = super().instantiate_trainer(**kwargs)
        checkpoint_io.install(trainer)
        if self.subcommand == "fit" and not any(isinstance(cb, StopOnNonFinite) for cb in trainer.callbacks):
            trainer.callbacks.append(StopOnNonFinite())  # a diverged run fails, never reports a result
        if self.subcommand == "fit" and self.config[self.subcommand].get("ckpt_path") is None:
            folder = Path(trainer.default_root_dir)
            if checkpoint_io.hpc_checkpoints(folder):  # SLURM auto-resume takes the newest readable one
                checkpoint_io.set_aside_unreadable_hpc_checkpoints(folder)
            checkpoint_io.refuse_restart_over_checkpoints(
                run_dir(trainer), folder, bool(self.config[self.subcommand].get("restart")))
        return trainer

    def _reject_hand_set_links(self) -> None:
        """A linked key set by hand (config or command line) to a value other than the data's would be silently
        overwritten by the link: refuse it, naming both values."""
        given = self.config[self.subcommand].get("model", {}).get("init_args", {}) or {}
        defaults = inspect.signature(type(self.model).__init__).parameters
        for key in LINKED_DATA_KEYS:
            if key not in given or key not in defaults:
                continue
            value, data_value = given[key], getattr(self.datamodule, key, None)
            if value != defaults[key].default and value != data_value:
                raise ValueError(
                    f"model.init_args.{key}={value!r} is set by hand, but {key} comes from the data "
                    f"(data.{key}={data_value!r}): remove it from the config / command line"
                )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path's hyper-parameters while parsing, with a bare torch.load: check the file
        # first, so that an empty or truncated checkpoint is one readable line
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if not path or str(path) in CKPT_PATH_KEYWORDS or not Path(path).is_file():
            return super()._parse_ckpt_path()
        self._checkpoint = (str(path), read_checkpoint(path, mmap=True))  # read once; _check_ckpt_path reuses it
        # Lightning builds the model from the class the checkpoint names: only one of jointdiff's own
        named = (self._checkpoint[1].get("hyper_parameters") or {}).get("_class_path")
        if named is not None:
            check_model_class(named, str(path))
        configured = self.config[sub].get("model")
        if configured is None:
            return super()._parse_ckpt_path()
        check_same_class(self._checkpoint[1], configured.get("class_path") or "", str(path))
        before = (configured.get("class_path"), dict(configured.get("init_args") or {}))
        super()._parse_ckpt_path()  # the model's class and arguments now come from the checkpoint
        after = self.config[sub].get("model")
        if after is None:
            return
        changed = [f"class {before[0]} → {after.get('class_path')}"] if after.get("class_path") != before[0] else []
        changed += [f"{k} {before[1][k]!r} → {v!r}" for k, v in (after.get("init_args") or {}).items()
                    if k in before[1] and k not in LINKED_DATA_KEYS and before[1][k] != v]
        if changed:
            rank_zero_warn(f"--ckpt_path {path}: the model is built as the checkpoint was trained, not as configured: "
                           + "; ".join(changed))

    def _check_ckpt_path(self) -> None:
        """Read ``--ckpt_path`` and compare it with the configured model before the trainer loads any data."""
        path = self.config[self.subcommand].get("ckpt_path")
        if path is None or str(path) in CKPT_PATH_KEYWORDS:
            return
        cached = getattr(self, "_checkpoint", None)
        checkpoint = cached[1] if cached and cached[0] == str(path) else read_checkpoint(path, mmap=True)
        check_checkpoint_fits(self.model, upgrade_checkpoint(checkpoint), str(path))
        check_finite_state(checkpoint.get("state_dict", {}), str(path))

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=None)


def run_lightning_cli(args: list[str] | None = None, cli_class: type[JointDiffCLI] = JointDiffCLI) -> JointDiffCLI:
    """Parse ``args`` (``None``: ``sys.argv``) and run the subcommand; ``cli_class`` may add to the CLI."""
    return cli_class(
        model_class=L.LightningModule,
        datamodule_class=ImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )
