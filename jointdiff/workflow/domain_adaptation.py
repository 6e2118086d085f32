"""Domain adaptation with the joint model (docs/design.md §8): target test accuracy before and after adapting.

Stage 1 trains the joint model on the labelled source (``data.stage: source``); its target test accuracy is the
"before" number. Stage 2 loads those weights (``model.init_from``) and continues with the diffusion loss only
(``model.skip_classifier_loss: true``, the head frozen) on the unlabelled target (``data.stage: target``) — or, as
the *source control*, on the unlabelled source images (``stage2_data: source``), so that a drop caused by the
regime shows apart from one caused by the domain. Its target test accuracy is the "after" number. The frozen head's
BatchNorm statistics in stage 2 are a setting (``head_statistics``: ``frozen``, the reference's
``skip_classifier_loss``; ``target``, its ``labelled_data_share=0`` route), and every stage-2 model is also scored
after AdaBN (:func:`jointdiff.models.head_statistics.reestimate_head_statistics` on stage 2's training images, our
departure). All numbers are of the final-step weights (decision D7; nothing is selected on a test set); the source
test accuracy is reported beside each when the data are a :class:`~jointdiff.data.DomainAdaptationDataModule`.
Stage 2 runs as many steps as stage 1 unless ``stage2_steps`` says otherwise (decision D15), at the config's learning
rate unless ``stage2_lr`` says otherwise (a fresh optimiser either way: ``init_from`` loads weights).

With a :class:`Plateau` each stage instead trains until its validation curve is flat
(:class:`~jointdiff.callbacks.StopOnPlateau`): stage 1 validates on the source's held-out part (EMA accuracy and
diffusion loss), stage 2 on the target's (diffusion loss), at least as long as stage 1 — the rule of the designed
experiment in docs/results.md ("Domain adaptation decided").

:func:`run_simultaneous` is the one-stage alternative (``data.stage: simultaneous``: labelled source and unlabelled
target in one semi-supervised run, the reference's SVHN→MNIST loader); its target test accuracy is the number, the
source test accuracy is reported beside it.

The command is ``jointdiff adapt`` (:mod:`jointdiff.commands.adapt`, ``--mode simultaneous`` for the one stage);
``jointdiff paper --tables "[6]"`` prints it for every pair of the paper.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from jointdiff.callbacks.plateau import StopOnPlateau
from jointdiff.files import atomic_write_json
from jointdiff.models.checkpoints import load_model, read_checkpoint
from jointdiff.workflow.lightning_cli import run_lightning_cli

ACCURACY_KEYS = ("test/acc", "test/acc_ema", "test/acc_raw")
HeadStatistics = Literal["frozen", "target"]
Stage2Data = Literal["target", "source"]


@dataclass(frozen=True)
class Plateau:
    """Each stage trains until flat: validation every ``every`` steps, stop at the first where the mean of the last
    fifth of the curve is within ``accuracy_tolerance`` (absolute, source EMA accuracy; stage 1 only) and
    ``loss_tolerance`` (relative, diffusion loss) of the fifth before it, after ``min_steps`` (stage 2: at least
    stage 1's steps) and at most ``max_steps``."""

    every: int = 250
    min_steps: int = 2000
    max_steps: int = 8000
    accuracy_tolerance: float = 0.01
    loss_tolerance: float = 0.02

    def __post_init__(self):
        if not 1 <= self.every <= self.max_steps or not 0 <= self.min_steps <= self.max_steps:
            raise ValueError(f"plateau needs 1 <= every <= max_steps and 0 <= min_steps <= max_steps, got {self}")

    def args(self, stage: int, min_steps: int) -> list[str]:
        """``jointdiff fit`` arguments of one stage (1: on the source's validation curve, 2: on the target's)."""
        absolute = {"val/acc_ema": self.accuracy_tolerance} if stage == 1 else {}
        return [
            "--data.init_args.val_domain", "source" if stage == 1 else "target",
            "--trainer.val_check_interval", str(self.every), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.max_steps", str(self.max_steps),
            "--trainer.callbacks+=jointdiff.callbacks.StopOnPlateau",
            "--trainer.callbacks.absolute", json.dumps(absolute),
            "--trainer.callbacks.relative", json.dumps({"val/diffusion_loss": self.loss_tolerance}),
            "--trainer.callbacks.min_steps", str(min_steps),
        ]


def check_stage2_args(stage2_lr: float | None, head_statistics: str, stage2_data: str) -> None:
    """Before stage 1 trains, not when stage 2 starts minutes later."""
    if stage2_lr is not None and not stage2_lr > 0:
        raise ValueError(f"--stage2_lr must be a positive learning rate, got {stage2_lr}")
    if head_statistics not in ("frozen", "target"):
        raise ValueError(f"--head_statistics must be frozen or target, got {head_statistics!r}")
    if stage2_data not in ("target", "source"):
        raise ValueError(f"--stage2_data must be target or source, got {stage2_data!r}")


def _accuracies(trainer, model, datamodule) -> dict[str, float]:
    results = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    return {k: float(results[k]) for k in ACCURACY_KEYS if k in results}


def _source_test_data(cli):
    """The same DataModule testing on the source's test split, or None when the data are no domain pair."""
    from jointdiff.data import DomainAdaptationDataModule

    if not isinstance(cli.datamodule, DomainAdaptationDataModule):
        return None
    init = cli.config["fit"]["data"]["init_args"].as_dict()
    return DomainAdaptationDataModule(**{**init, "test_domain": "source"})


def _fit_and_test(args: list[str]) -> tuple[object, dict, dict | None, str, int]:
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it also sees the caller's own arguments
    try:
        cli = run_lightning_cli(["fit", *args])
    finally:
        sys.argv = argv
    ckpt = cli.trainer.checkpoint_callback.last_model_path if cli.trainer.checkpoint_callback else ""
    if not ckpt:
        raise RuntimeError("the config must save a last checkpoint (ModelCheckpoint with save_last: true)")
    if read_checkpoint(ckpt, mmap=True).get("global_step") != cli.trainer.global_step:
        # ModelCheckpoint writes `last` when it is triggered (a validation), not when max_steps ends a run between
        # two validations: the checkpoint passed on (stage 2's start) must hold the weights that were tested
        cli.trainer.save_checkpoint(ckpt)
    target = _accuracies(cli.trainer, cli.model, cli.datamodule)
    source_data = _source_test_data(cli)
    source = None if source_data is None else _accuracies(cli.trainer, cli.model, source_data)
    return cli, target, source, ckpt, cli.trainer.global_step


def _plateau_record(cli) -> dict:
    """Whether a stage stopped on its plateau (or ran to max_steps), and the validation curve the rule read."""
    rule = next((c for c in cli.trainer.callbacks if isinstance(c, StopOnPlateau)), None)
    if rule is None:
        return {}
    return {"plateau_reached": rule.stopped_at_step is not None, "validation_steps": rule.steps,
            "validation_curve": rule.history}


def _adabn(model, trainer, datamodule, source_data) -> tuple[dict, dict | None, int]:
    """A copy of ``model`` with its head's BatchNorm statistics re-estimated on ``datamodule``'s training images
    (stage 2's; raw and EMA networks alike), tested on the target and the source."""
    from jointdiff.models.head_statistics import reestimate_head_statistics

    model = copy.deepcopy(model)
    seen = 0
    for network in (model.network, model.ema.module):  # stage 2's images, streamed; labels hidden (−1) and unused
        seen = reestimate_head_statistics(network, (x for x, _ in datamodule.train_dataloader()))
    target = _accuracies(trainer, model, datamodule)
    source = None if source_data is None else _accuracies(trainer, model, source_data)
    return target, source, seen


def _curve(cli, folder: Path, adabn: bool, source_too: bool) -> list[dict]:
    """Target test accuracy (raw and EMA; after AdaBN too) of every checkpoint stage 2 wrote along the way, in step
    order, and with ``source_too`` the source's (the source control's own domain): the test split is read, never
    used to choose anything."""
    source_data = _source_test_data(cli) if source_too else None
    points = []
    for path in sorted(folder.glob("step=*.ckpt")):
        model = load_model(path).to(cli.model.device)
        point = {"step": int(path.stem.split("=")[1]), "target_test": _accuracies(cli.trainer, model, cli.datamodule)}
        if source_data is not None:
            point["source_test"] = _accuracies(cli.trainer, model, source_data)
        if adabn:
            point["target_test_adabn"] = _adabn(model, cli.trainer, cli.datamodule, None)[0]
        points.append(point)
    return points


def train_stage1(config: str, out: str, extra: list[str] | None = None, plateau: Plateau | None = None) -> dict:
    """Stage 1 alone (joint training on the labelled source), tested on the target and the source; returns and
    writes ``<out>/stage1.json``, which :func:`run` takes as ``stage1`` so that several stage-2 arms share it."""
    cli, target, source, ckpt, steps = _fit_and_test([
        "-c", config, *(extra or []), "--trainer.logger.init_args.save_dir", out,
        "--trainer.logger.init_args.name", "stage1", "--trainer.default_root_dir", f"{out}/stage1",
        "--data.init_args.stage", "source", *(plateau.args(1, plateau.min_steps) if plateau else []),
    ])
    record = {"config": config, "extra_args": extra or [], "plateau": asdict(plateau) if plateau else None,
              "steps": steps, "checkpoint": ckpt, **_plateau_record(cli),
              "target_test": target, "source_test": source}
    atomic_write_json(record, Path(out) / "stage1.json")
    return record


def run(config: str, out: str, stage2_steps: int | None = None, extra: list[str] | None = None,
        stage2_lr: float | None = None, head_statistics: HeadStatistics = "frozen",
        stage2_data: Stage2Data = "target", adabn: bool = True, plateau: Plateau | None = None,
        stage1: dict | None = None, curve_every: int | None = None) -> dict:
    """Both stages (``config`` then ``extra`` as ``jointdiff fit`` arguments of each); returns and writes
    ``<out>/domain_adaptation.json``. ``plateau``: each stage until flat (module docstring). ``stage1``: the record
    of a finished stage 1 (:func:`train_stage1`) to start stage 2 from instead of training one. ``curve_every``:
    stage 2 also keeps a checkpoint every that many steps, each tested on the target afterwards (``curve``)."""
    check_stage2_args(stage2_lr, head_statistics, stage2_data)
    if plateau is not None and stage2_steps is not None:
        raise ValueError("give stage2_steps or plateau, not both (with a plateau, stage 2 trains until flat)")
    if curve_every is not None and curve_every < 1:
        raise ValueError(f"curve_every must be >= 1, got {curve_every}")
    if stage1 is None:
        stage1 = train_stage1(config, out, extra, plateau)
    elif not Path(stage1["checkpoint"]).is_file():
        raise FileNotFoundError(f"stage 1's checkpoint {stage1['checkpoint']} is gone: train stage 1 again")
    common = ["-c", config, *(extra or [])]
    logs = ["--trainer.logger.init_args.save_dir", out]
    ckpt1, steps1 = stage1["checkpoint"], stage1["steps"]
    stage2_length = plateau.args(2, steps1) if plateau else ["--trainer.max_steps", str(stage2_steps or steps1)]
    curve_dir = Path(out) / "stage2" / "curve"
    along = [] if curve_every is None else [
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath", str(curve_dir), "--trainer.callbacks.filename", "{step:07d}",
        "--trainer.callbacks.every_n_train_steps", str(curve_every), "--trainer.callbacks.save_top_k", "-1",
    ]
    cli2, after, source_after, ckpt2, steps2 = _fit_and_test([
        *common, *logs, "--trainer.logger.init_args.name", "stage2", "--trainer.default_root_dir", f"{out}/stage2",
        "--data.init_args.stage", "target" if stage2_data == "target" else "source_unlabelled",
        "--model.init_args.init_from", ckpt1, "--model.init_args.skip_classifier_loss", "true",
        "--model.init_args.head_statistics", head_statistics, *stage2_length, *along,
        *(["--model.init_args.lr", str(stage2_lr)] if stage2_lr is not None else []),
    ])
    summary = {
        "config": config, "extra_args": extra or [], "head_statistics": head_statistics, "stage2_data": stage2_data,
        "plateau": asdict(plateau) if plateau else None,
        "stage1": {k: stage1[k] for k in ("steps", "checkpoint", "plateau_reached", "validation_steps",
                                          "validation_curve") if k in stage1},
        "stage2": {"steps": steps2, "checkpoint": ckpt2, **({"lr": stage2_lr} if stage2_lr is not None else {}),
                   **_plateau_record(cli2)},
        "target_test_before": stage1["target_test"], "target_test_after": after,
        "source_test_before": stage1["source_test"], "source_test_after": source_after,
    }
    if curve_every is not None:
        summary["curve"] = _curve(cli2, curve_dir, adabn, source_too=stage2_data == "source")
    if adabn:
        target, source, seen = _adabn(cli2.model, cli2.trainer, cli2.datamodule, _source_test_data(cli2))
        summary.update(target_test_after_adabn=target, source_test_after_adabn=source, adabn_images=seen)
    atomic_write_json(summary, Path(out) / "domain_adaptation.json")
    print(f"\n{'test accuracy':<28}{'before (stage 1)':>18}{'after (stage 2)':>18}"
          + (f"{'after + AdaBN':>16}" if adabn else ""))
    for domain in ("target", "source"):
        rows = [summary.get(f"{domain}_test_{w}") for w in ("before", "after", "after_adabn")]
        if rows[0] is None:
            continue
        for k in ACCURACY_KEYS:
            if k in rows[0]:
                cells = "".join(f"{r[k]:>18.4f}" for r in rows[:2]) + (f"{rows[2][k]:>16.4f}" if rows[2] else "")
                print(f"{domain + ' ' + k:<28}{cells}")
    print(f"stage 1: {steps1} steps, stage 2: {steps2} steps on the {stage2_data} images (head statistics "
          f"{head_statistics}); summary in {Path(out) / 'domain_adaptation.json'}")
    return summary


def run_simultaneous(config: str, out: str, extra: list[str] | None = None,
                     semi_supervised_mode: str = "buffer") -> dict:
    """One semi-supervised stage on the labelled source and the unlabelled target (``config`` then ``extra`` as
    ``jointdiff fit`` arguments); returns and writes ``<out>/domain_adaptation.json``."""
    if semi_supervised_mode not in ("buffer", "stream"):
        raise ValueError(f"semi_supervised_mode must be buffer or stream, got {semi_supervised_mode!r}")
    _, target, source, ckpt, steps = _fit_and_test([
        "-c", config, *(extra or []), "--trainer.logger.init_args.save_dir", out,
        "--trainer.logger.init_args.name", "simultaneous", "--trainer.default_root_dir", f"{out}/simultaneous",
        "--data.init_args.stage", "simultaneous", "--data.init_args.semi_supervised_mode", semi_supervised_mode,
    ])
    summary = {
        "config": config, "extra_args": extra or [], "mode": "simultaneous",
        "semi_supervised_mode": semi_supervised_mode, "simultaneous": {"steps": steps, "checkpoint": ckpt},
        "target_test": target, "source_test": source,
    }
    atomic_write_json(summary, Path(out) / "domain_adaptation.json")
    print(f"\n{'test accuracy':<28}{'simultaneous':>18}")
    for domain, accuracies in (("target", target), ("source", source)):
        for k in ACCURACY_KEYS:
            if accuracies and k in accuracies:
                print(f"{domain + ' ' + k:<28}{accuracies[k]:>18.4f}")
    print(f"one stage of {steps} steps on labelled source + unlabelled target ({semi_supervised_mode}); "
          f"summary in {Path(out) / 'domain_adaptation.json'}")
    return summary
