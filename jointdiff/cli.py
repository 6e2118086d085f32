"""``jointdiff`` command line: LightningCLI over every model and DataModule of the package.

    jointdiff fit  --config configs/fashion_mnist/quick.yaml
    jointdiff test --config configs/fashion_mnist/quick.yaml --ckpt_path runs/.../last.ckpt
    jointdiff fit  --config configs/fashion_mnist/joint.yaml --print_config

Data-shape arguments (``image_size``, ``channels``, ``num_classes``, ``task``) are linked from the DataModule into
the model, so a config never states them twice. Unknown config keys are rejected by jsonargparse before anything
is built.
"""

from __future__ import annotations

import importlib
import sys

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import jointdiff.data  # noqa: F401  (registers DataModules for short class names)
import jointdiff.models  # noqa: F401  (registers models for short class names)
from jointdiff.data.base import ImageDataModule

LINKED_DATA_KEYS = ("image_size", "channels", "num_classes", "task")

# Subcommands beside LightningCLI's fit/validate/test/predict: name → "module:function", where the function takes
# the remaining argv. Each lives in its own module under jointdiff/commands/ and is imported only when used.
COMMANDS: dict[str, str] = {
    "reconstruct": "jointdiff.commands.reconstruct:main",
    "interpolate": "jointdiff.commands.interpolate:main",
    "manipulate": "jointdiff.commands.manipulate:main",
    "sample": "jointdiff.commands.sample:main",
    "counterfactual": "jointdiff.commands.counterfactual:main",
    "alpha-sweep": "jointdiff.commands.alpha_sweep:main",
    "sweep": "jointdiff.commands.sweep:main",
    "paper": "jointdiff.commands.paper:main",
    "report": "jointdiff.commands.report:main",
}


class JointDiffCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in LINKED_DATA_KEYS:
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after `fit`, run `test` on the final (last-step) weights in the same run directory",
        )

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=None)


def run_lightning_cli(args: list[str] | None = None) -> JointDiffCLI:
    return JointDiffCLI(
        model_class=L.LightningModule,
        datamodule_class=ImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in COMMANDS:
        module, func = COMMANDS[argv[0]].split(":")
        getattr(importlib.import_module(module), func)(argv[1:])
        return
    if argv and argv[0] in ("-h", "--help"):
        print("extra subcommands: " + (", ".join(sorted(COMMANDS)) or "(none)"))
    run_lightning_cli(args)  # None: LightningCLI reads sys.argv itself (passing both makes it warn)


if __name__ == "__main__":
    main()
