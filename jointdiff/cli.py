"""``jointdiff`` command line: LightningCLI over every model and DataModule of the package.

    jointdiff fit  --config configs/demo.yaml
    jointdiff test --config configs/demo.yaml --ckpt_path runs/.../last.ckpt
    jointdiff fit  -c configs/base/default.yaml -c configs/paper/data/fashion_mnist.yaml \\
                   -c configs/paper/models/joint.yaml --print_config

Data-shape arguments (``image_size``, ``channels``, ``num_classes``, ``task``) are linked from the DataModule into
the model, so a config never states them twice. Unknown config keys are rejected by jsonargparse before anything
is built.

Errors a person can act on (a bad value, a missing or unreadable file, a checkpoint that does not fit the config)
are printed as one line, ``jointdiff: error: …``, before any data is read, with exit status 2; set
``JOINTDIFF_DEBUG=1`` to get the traceback instead. A run stopped by SIGTERM exits with status 143 (128 + 15) and
SIGINT with 1, after the callbacks recorded the interruption (``run.json``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from lightning.pytorch.utilities.exceptions import SIGTERMException

from jointdiff.workflow.lightning_cli import JointDiffCLI, run_lightning_cli

__all__ = ["COMMANDS", "JointDiffCLI", "console", "main", "run_lightning_cli"]

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
    "adapt": "jointdiff.commands.adapt:main",
    "report": "jointdiff.commands.report:main",
    "score": "jointdiff.commands.score:main",
}


DEBUG_ENV = "JOINTDIFF_DEBUG"
SIGTERM_EXIT = 128 + 15
PACKAGE_DIR = Path(__file__).resolve().parent


def user_error(error: BaseException) -> BaseException | None:
    """The exception a person should read, or ``None`` for a bug: the innermost ``ValueError``/``TypeError``/
    ``FileNotFoundError`` raised by jointdiff's own code in ``error``'s chain (jsonargparse wraps the one a model's
    ``__init__`` raises in two more)."""
    found, seen, err = None, set(), error
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ValueError, TypeError, FileNotFoundError)) and _raised_here(err):
            found = err
        err = err.__cause__ or err.__context__
    return found


def _raised_here(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and PACKAGE_DIR in Path(tb.tb_frame.f_code.co_filename).resolve().parents


def console(args: list[str] | None = None) -> None:
    """The ``jointdiff`` console script: :func:`main` with the error and exit-status conventions of the module
    docstring (Python callers of :func:`main` get the exceptions themselves)."""
    try:
        main(args)
    except SIGTERMException:
        print("jointdiff: stopped by SIGTERM", file=sys.stderr)
        sys.exit(SIGTERM_EXIT)
    except SystemExit:
        raise
    except Exception as err:
        shown = user_error(err)
        if shown is None or os.environ.get(DEBUG_ENV):
            raise
        print(f"jointdiff: error: {shown}  [{DEBUG_ENV}=1 shows the traceback]", file=sys.stderr)
        sys.exit(2)


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
    console()
