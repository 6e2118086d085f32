"""Offline expansion of W&B sweep YAML files into the command lines ``wandb agent`` would run.

A W&B sweep needs a W&B server: the agent asks it for the next parameters and runs the sweep's ``command`` with the
macros filled in. This module does the same without a server for the two methods that need none: ``grid`` (every
combination of the parameters' ``values``, in the file's order, last parameter fastest) and ``random`` (``count``
independent draws, seeded). The command line is built with wandb's own macro functions
(``wandb.sdk.launch.sweeps.utils``), so ``${args}`` gives exactly the ``--key=value`` strings the agent passes
(``str(value)`` of each value: a list ``[0, 50]`` becomes ``--model.init_args.noisy_timesteps=[0, 50]``, which
jsonargparse reads as a list; write ``"null"``, not ``null``, for None — the agent would pass ``None``).

Differences from the agent, on purpose: ``${interpreter}`` is this Python (the agent uses ``python`` from PATH);
``bayes`` search and ``early_terminate`` need the server and are refused / ignored; nested ``parameters`` are
refused.
"""

from __future__ import annotations

import copy
import itertools
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from jointdiff.runs import CONTROL_CHARACTERS

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
DISTRIBUTIONS = (
    "constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values",
    "q_log_uniform_values", "inv_log_uniform_values", "normal", "q_normal", "log_normal",
)


class SweepError(ValueError):
    """A sweep file that cannot be expanded offline; the message says why and what to write instead."""


@dataclass(frozen=True)
class SweepRun:
    index: int
    params: dict[str, Any]
    argv: list[str]

    def shell(self) -> str:
        return shlex.join(self.argv)


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file: ``method``, ``parameters`` (flat), ``command`` or ``program``."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: a sweep file is a YAML mapping with method, parameters and command")
    method = spec.get("method")
    if method == "bayes":
        raise SweepError(f"{path}: method 'bayes' needs the W&B server (`wandb sweep` + `wandb agent`); offline "
                         "expansion supports grid and random")
    if method not in ("grid", "random"):
        raise SweepError(f"{path}: method must be grid or random, got {method!r}")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{path}: 'parameters' must be a non-empty mapping of name → spec")
    for name, p in params.items():
        if not isinstance(p, dict):
            raise SweepError(f"{path}: parameter {name!r} must be a mapping (value, values or distribution)")
        if "parameters" in p:
            raise SweepError(f"{path}: nested parameters ({name!r}) are not supported offline; use dotted names "
                             "such as model.init_args.lr")
        _distribution(name, p)  # validates
        if method == "grid" and "value" not in p and "values" not in p:
            raise SweepError(f"{path}: grid search needs 'value' or 'values' for {name!r} (a distribution has no "
                             "finite grid)")
    command = spec.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise SweepError(f"{path}: 'command' must be a list of strings")
    if any("${program}" in str(c) for c in command) and not spec.get("program"):
        raise SweepError(f"{path}: the command uses ${{program}} but the file sets no 'program'")
    return spec


def _distribution(name: str, p: dict) -> str:
    if "value" in p:
        return "constant"
    if "values" in p:
        if not isinstance(p["values"], list) or not p["values"]:
            raise SweepError(f"parameter {name!r}: 'values' must be a non-empty list")
        probs = p.get("probabilities")
        if probs is not None and (len(probs) != len(p["values"]) or not math.isclose(sum(probs), 1.0)):
            raise SweepError(f"parameter {name!r}: 'probabilities' must match 'values' and sum to 1")
        return "categorical"
    dist = p.get("distribution")
    if dist is None:  # W&B's inference from min/max
        if "min" in p and "max" in p:
            dist = "int_uniform" if all(isinstance(p[k], int) for k in ("min", "max")) else "uniform"
        else:
            raise SweepError(f"parameter {name!r}: give value, values, or a distribution with its bounds")
    if dist not in DISTRIBUTIONS:
        raise SweepError(f"parameter {name!r}: distribution {dist!r} is not supported offline "
                         f"(supported: {', '.join(DISTRIBUTIONS)})")
    needed = ("mu", "sigma") if dist in ("normal", "q_normal", "log_normal") else ("min", "max")
    missing = [k for k in needed if k not in p]
    if missing:
        raise SweepError(f"parameter {name!r}: distribution {dist} needs {', '.join(missing)}")
    if needed == ("min", "max") and not p["min"] < p["max"]:
        raise SweepError(f"parameter {name!r}: min must be < max")
    if dist in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values") and p["min"] <= 0:
        raise SweepError(f"parameter {name!r}: {dist} needs min > 0")
    return dist


def _draw(name: str, p: dict, rng: np.random.Generator) -> Any:
    dist = _distribution(name, p)
    if dist == "constant":
        return p["value"]
    if dist == "categorical":
        i = rng.choice(len(p["values"]), p=p.get("probabilities"))
        return p["values"][int(i)]
    q = p.get("q", 1.0)
    if dist == "int_uniform":
        return int(rng.integers(p["min"], p["max"], endpoint=True))
    if dist == "uniform":
        return float(rng.uniform(p["min"], p["max"]))
    if dist == "q_uniform":
        return float(np.round(rng.uniform(p["min"], p["max"]) / q) * q)
    if dist == "log_uniform":  # W&B: min/max are natural-log exponents
        return float(np.exp(rng.uniform(p["min"], p["max"])))
    if dist == "log_uniform_values":
        return float(np.exp(rng.uniform(np.log(p["min"]), np.log(p["max"]))))
    if dist == "q_log_uniform_values":
        return float(np.round(np.exp(rng.uniform(np.log(p["min"]), np.log(p["max"]))) / q) * q)
    if dist == "inv_log_uniform_values":
        return float(1.0 / np.exp(rng.uniform(np.log(1.0 / p["max"]), np.log(1.0 / p["min"]))))
    if dist == "normal":
        return float(rng.normal(p["mu"], p["sigma"]))
    if dist == "q_normal":
        return float(np.round(rng.normal(p["mu"], p["sigma"]) / q) * q)
    return float(np.exp(rng.normal(p["mu"], p["sigma"])))  # log_normal


def parameter_sets(spec: dict, count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The parameters of each run: the whole grid (``count`` truncates it), or ``count`` random draws
    (default: the file's ``run_cap``)."""
    params = spec["parameters"]
    names = list(params)
    if spec["method"] == "grid":
        axes = [[params[n]["value"]] if "value" in params[n] else list(params[n]["values"]) for n in names]
        sets = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]
        return sets[:count] if count is not None else sets
    count = count if count is not None else spec.get("run_cap")
    if not count or count < 1:
        raise SweepError("random search needs a number of runs: --count N (or run_cap in the file)")
    rng = np.random.default_rng(seed)
    return [{n: _draw(n, params[n], rng) for n in names} for _ in range(count)]


def command_line(spec: dict, params: dict[str, Any], interpreter: str | None = None) -> list[str]:
    """The argv ``wandb agent`` would run for ``params`` (macros filled with wandb's own functions)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    command = create_sweep_command(copy.deepcopy(list(spec.get("command", DEFAULT_COMMAND))))
    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars["interpreter"] = [interpreter or sys.executable]
    sweep_vars["program"] = [spec.get("program", "")]
    sweep_vars["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in command:
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            name = chunk[2:-1]
            if name not in sweep_vars:
                raise SweepError(f"command macro {chunk} is not supported offline")
            argv += [str(v) for v in sweep_vars[name]]
        else:
            argv.append(chunk)
    return argv


def expand(path: str | Path, count: int | None = None, seed: int = 0, interpreter: str | None = None) -> list[SweepRun]:
    """Every run of the sweep file at ``path`` as (index, parameters, argv)."""
    spec = load_sweep(path)
    runs = [SweepRun(i, p, command_line(spec, p, interpreter)) for i, p in enumerate(parameter_sets(spec, count, seed))]
    for run in runs:  # a newline would split commands.tsv (one task per line) and run the wrong commands
        for arg in run.argv:
            if CONTROL_CHARACTERS.search(arg):
                raise SweepError(f"{path}: run {run.index} would pass {arg!r}, which contains a control character "
                                 "(newline, tab, …): sweep values must be one line of printable text")
    return runs


def fit_args(argv: list[str]) -> list[str] | None:
    """The arguments after ``fit`` when ``argv`` runs ``jointdiff fit`` (directly, through ``env``, or as
    ``python -m jointdiff.cli``); ``None`` for any other command."""
    for i, a in enumerate(argv[:-1]):
        if argv[i + 1] == "fit" and (Path(a).name == "jointdiff" or a == "jointdiff.cli"):
            return argv[i + 2 :]
    return None
