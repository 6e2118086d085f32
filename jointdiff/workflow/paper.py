"""The paper's experiments as compositions of the configs under ``configs/`` (one entry per training run).

Every entry names its table(s), the ``--config`` files in order (budget preset, dataset, optional setting, method,
optional evaluation/labels overlays), extra dotted arguments, the runs it needs first (the probe reads its DDPM's
checkpoint) and whether it builds a UNet (then its CPU smoke variant also takes ``configs/base/tiny_unet.yaml``).
Each run has a fixed folder, ``runs/paper/<key>`` (``runs/quick/<key>`` for the smoke variant), passed to the run as
``$JOINTDIFF_RUN_DIR`` and ``--trainer.default_root_dir``, so a dependent run knows where its input lands.

``jointdiff paper`` prints or runs these (:mod:`jointdiff.workflow.reproduce`); ``docs/workflow.md`` lists them per
table; ``tests/test_configs.py`` instantiates every composition.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jointdiff.runs import RUN_DIR_ENV

BASE = "configs/base/default.yaml"
QUICK = ("configs/base/cpu_quick.yaml",)
TINY_UNET = "configs/base/tiny_unet.yaml"
DATA = "configs/paper/data/{}.yaml"
MODEL = "configs/paper/models/{}.yaml"
SMALL_UNET = "configs/paper/semi_supervised/small_unet.yaml"
LABELS = "configs/paper/semi_supervised/labels_{}pct.yaml"
GENERATIVE_EVAL = "configs/eval/fid_inception.yaml"  # the evaluation add-on of configs/eval (Table 2)

TABLE1_DATASETS = ("fashion_mnist", "svhn", "cifar10", "cifar100")
TABLE2_DATASETS = ("fashion_mnist", "cifar10", "cifar100", "celeba")
TABLE5_FRACTIONS = {"svhn": (100, 5, 1), "cifar10": (100, 5, 1), "cifar100": (100, 10, 5, 1)}
TABLE6_PAIRS = {"mnist_usps": "usps", "usps_mnist": "mnist", "svhn_mnist": "mnist32"}  # pair → target fragment


@dataclass(frozen=True)
class PaperRun:
    """One training run of the paper's experiments.

    ``kind`` is ``fit`` (``jointdiff fit`` with ``configs`` and ``args``) or ``domain_adaptation`` (both stages by
    ``jointdiff adapt``, which takes ``configs[0]`` as ``--config`` and the rest after ``--``).
    """

    key: str
    tables: tuple[str, ...]
    configs: tuple[str, ...]
    args: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    unet: bool = True
    kind: str = "fit"
    note: str = ""
    tags: dict = field(default_factory=dict, compare=False)

    def run_dir(self, quick: bool = False, root: str = "runs") -> Path:
        return Path(root) / ("quick" if quick else "paper") / self.key

    def config_files(self, quick: bool = False) -> list[str]:
        """The ``--config`` files in order; the smoke variant appends the CPU preset (and the tiny UNet)."""
        files = list(self.configs)
        if quick:
            files += list(QUICK) + ([TINY_UNET] if self.unet else [])
        return files

    def fit_args(self, quick: bool = False, root: str = "runs") -> list[str]:
        """Arguments after ``jointdiff fit`` (configs, then dotted overrides with run folders resolved)."""
        out: list[str] = []
        for f in self.config_files(quick):
            out += ["--config", f]
        folder = self.run_dir(quick, root)
        out += [a.format(quick="quick" if quick else "paper", root=root) for a in self.args]
        return out + [f"--trainer.default_root_dir={folder}"]

    def command(self, quick: bool = False, root: str = "runs") -> tuple[list[str], dict[str, str]]:
        """(argv, extra environment) that runs this entry from the repository root."""
        folder = self.run_dir(quick, root)
        if self.kind == "domain_adaptation":
            files = self.config_files(quick)
            rest: list[str] = []
            for f in files[1:]:
                rest += ["-c", f]
            # the script tests each stage itself: no second test through test_after_fit
            argv = ["jointdiff", "adapt", "--config", files[0], "--out", str(folder),
                    "--", *rest, "--test_after_fit=false"]
            return argv, {}
        return ["jointdiff", "fit", *self.fit_args(quick, root)], {RUN_DIR_ENV: str(folder)}

    def shell(self, quick: bool = False, root: str = "runs") -> str:
        argv, env = self.command(quick, root)
        if argv[0] == sys.executable:
            argv = ["python", *argv[1:]]
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        return (prefix + " " if prefix else "") + shlex.join(argv)


def _checkpoint_of(key: str) -> str:
    return "{root}/{quick}/" + key + "/checkpoints/last.ckpt"


def paper_runs() -> list[PaperRun]:
    """Every training run behind Tables 1, 2, 5, 6 and the MALARIA counterfactuals, dependencies first."""
    runs: list[PaperRun] = []
    for ds in dict.fromkeys(TABLE1_DATASETS + TABLE2_DATASETS):
        data = DATA.format(ds)
        t1, t2 = ds in TABLE1_DATASETS, ds in TABLE2_DATASETS
        gen = (GENERATIVE_EVAL,) if t2 else ()
        runs.append(PaperRun(f"{ds}/ddpm", ("1", "2") if t2 else ("1",), (BASE, data, MODEL.format("ddpm"), *gen),
                             tags={"dataset": ds, "method": "ddpm"}))
        runs.append(PaperRun(f"{ds}/joint", tuple(t for t, on in (("1", t1), ("2", t2)) if on),
                             (BASE, data, MODEL.format("joint"), *gen), tags={"dataset": ds, "method": "joint"}))
        if t1:
            runs.append(PaperRun(f"{ds}/classifier", ("1",), (BASE, data, MODEL.format("classifier")),
                                 tags={"dataset": ds, "method": "classifier"}))
            runs.append(PaperRun(f"{ds}/probe", ("1",), (BASE, data, MODEL.format("probe")),
                                 (f"--model.init_args.checkpoint={_checkpoint_of(f'{ds}/ddpm')}",),
                                 needs=(f"{ds}/ddpm",), unet=False, tags={"dataset": ds, "method": "probe"}))
        if t2:
            runs.append(PaperRun(f"{ds}/noise_classifier", ("2",), (BASE, data, MODEL.format("noise_classifier")),
                                 note="guides the DDPM: jointdiff sample --sampler guidance",
                                 tags={"dataset": ds, "method": "noise_classifier"}))
            runs.append(PaperRun(f"{ds}/joint_noisy", ("2",), (BASE, data, MODEL.format("joint_noisy")),
                                 note="conditional sampling: jointdiff sample --sampler joint / alpha-sweep",
                                 tags={"dataset": ds, "method": "joint_noisy"}))
    for ds, fractions in TABLE5_FRACTIONS.items():
        data = DATA.format(ds)
        ddpm = f"table5/{ds}/ddpm"
        runs.append(PaperRun(ddpm, ("5",), (BASE, data, SMALL_UNET, MODEL.format("ddpm")),
                             tags={"dataset": ds, "method": "ddpm"}))
        for pct in fractions:
            labels = (LABELS.format(pct),) if pct < 100 else ()
            for method in ("classifier", "probe", "joint"):
                key = f"table5/{ds}/{method}_{pct}pct"
                probe = method == "probe"
                runs.append(PaperRun(
                    key, ("5",), (BASE, data, SMALL_UNET, MODEL.format(method), *labels),
                    (f"--model.init_args.checkpoint={_checkpoint_of(ddpm)}",) if probe else (),
                    needs=(ddpm,) if probe else (), unet=not probe,
                    tags={"dataset": ds, "method": method, "labelled_pct": pct},
                ))
    for pair, target in TABLE6_PAIRS.items():
        data = DATA.format(f"da_{pair}")
        runs.append(PaperRun(f"table6/{pair}/classifier", ("6",), (BASE, data, MODEL.format("classifier")),
                             tags={"pair": pair, "method": "classifier"}))
        runs.append(PaperRun(f"table6/{pair}/joint", ("6",), (BASE, data, MODEL.format("joint")),
                             kind="domain_adaptation", tags={"pair": pair, "method": "joint"},
                             note="stage 1 on the source, stage 2 diffusion-only on the target"))
        runs.append(PaperRun(f"table6/{pair}/upper_bound", ("6",),
                             (BASE, DATA.format(target), MODEL.format("classifier")),
                             tags={"pair": pair, "method": "upper_bound"}))
    runs.append(PaperRun("malaria/joint_noisy", ("malaria",),
                         (BASE, DATA.format("malaria"), MODEL.format("joint_noisy")),
                         note="then: jointdiff counterfactual --checkpoint <run>/checkpoints/last.ckpt "
                              "--data MalariaDataModule --split test",
                         tags={"dataset": "malaria", "method": "joint_noisy"}))
    return runs


def select(runs: list[PaperRun], tables: list[str] | None = None, keys: list[str] | None = None) -> list[PaperRun]:
    """The runs of ``tables`` (and/or whose key starts with one of ``keys``) plus everything they need, in order."""
    by_key = {r.key: r for r in runs}
    wanted = [r for r in runs if (not tables or set(r.tables) & set(tables))
              and (not keys or any(r.key.startswith(k) for k in keys))]
    closure: set[str] = set()

    def add(key: str) -> None:
        if key in closure:
            return
        if key not in by_key:
            raise KeyError(f"unknown paper run {key!r}")
        for dep in by_key[key].needs:
            add(dep)
        closure.add(key)

    for r in wanted:
        add(r.key)
    return [r for r in runs if r.key in closure]
