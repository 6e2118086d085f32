"""Build a composition's trainer, model and DataModule without training: a check before queueing cluster jobs.

:func:`instantiate` runs the real ``jointdiff fit`` command line (the same parser, argument links and subcommand
handling) with ``Trainer.fit``/``Trainer.test`` replaced by no-ops, so everything a config can get wrong (unknown
keys, wrong types, constructor checks, data-shape links) fails here, while no data is read (DataModules read their
files in ``setup``) and nothing is trained. Modules are built on PyTorch's ``meta`` device by default: shapes and
parameter counts without memory, so a 121M-parameter model costs nothing (models that load a checkpoint's tensors
in their constructor, :data:`META_UNSAFE`, are built for real). The argument parser is built once per process and
reused, since building it dominates the cost of a check.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import lightning as L
import torch

from jointdiff.workflow.lightning_cli import JointDiffCLI, run_lightning_cli

META_UNSAFE = ("FrozenDDPMProbe", "PDAE")  # load a checkpoint's tensors in __init__: build them for real
_PARSER_CACHE: dict[str, tuple] = {}
_SETTINGS: dict[str, bool | None] = {"meta": None}


class _CheckingCLI(JointDiffCLI):
    """The project's CLI with a parser kept for the next instance in this process and a device chosen per model."""

    def setup_parser(self, add_subcommands, main_kwargs, subparser_kwargs) -> None:
        if "fit" not in _PARSER_CACHE:
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
            _PARSER_CACHE["fit"] = (self.parser, self._subcommand_parsers, self._subcommand_method_arguments)
        self.parser, self._subcommand_parsers, self._subcommand_method_arguments = _PARSER_CACHE["fit"]

    def instantiate_classes(self) -> None:
        model = str(self.config[self.subcommand].model.class_path).rsplit(".", 1)[-1]
        meta = _SETTINGS["meta"] if _SETTINGS["meta"] is not None else model not in META_UNSAFE
        with torch.device("meta") if meta else contextlib.nullcontext():
            super().instantiate_classes()


def _skip(method):
    @functools.wraps(method)  # keeps the signature, which the CLI reads to build the subcommand's arguments
    def skipped(self, *args, **kwargs):
        return None

    return skipped


@contextlib.contextmanager
def _no_training(meta: bool | None) -> Iterator[None]:
    original = L.Trainer.fit, L.Trainer.test, _SETTINGS["meta"]
    _SETTINGS["meta"] = meta
    L.Trainer.fit, L.Trainer.test = _skip(L.Trainer.fit), _skip(L.Trainer.test)
    try:
        yield
    finally:
        L.Trainer.fit, L.Trainer.test, _SETTINGS["meta"] = original


def instantiate(fit_args: list[str], meta: bool | None = None) -> JointDiffCLI:
    """Parse and build everything ``jointdiff fit <fit_args>`` would build, then stop before training.

    ``meta=None`` uses the meta device unless the model is in :data:`META_UNSAFE`. Returns the CLI object
    (``.trainer``, ``.model``, ``.datamodule``, ``.config["fit"]``).
    """
    with _no_training(meta):
        return run_lightning_cli(["fit", *fit_args], cli_class=_CheckingCLI)
