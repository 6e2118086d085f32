"""Domain adaptation with the joint model (docs/design.md §8): target test accuracy before and after adapting.

Stage 1 trains the joint model on the labelled source (``data.stage: source``); its target test accuracy is the
"before" number. Stage 2 loads those weights (``model.init_from``) and continues with the diffusion loss only on the
unlabelled target (``data.stage: target``, ``model.skip_classifier_loss: true``; the head is frozen); its target
test accuracy is the "after" number. Both are the final-step weights (decision D7; nothing is selected on the target
test set). Stage 2 runs as many steps as stage 1 unless ``--stage2_steps`` says otherwise (decision D15), at the
config's learning rate unless ``--stage2_lr`` says otherwise (a fresh optimiser either way: ``init_from`` loads
weights).

    JOINTDIFF_DATA_ROOT=../shared/data python experiments/domain_adaptation.py \\
        --config configs/base/default.yaml --out runs/paper/table6/usps_mnist/joint \\
        [--stage2_steps N] [--stage2_lr LR] \\
        -- -c configs/paper/data/da_usps_mnist.yaml -c configs/paper/models/joint.yaml [<more jointdiff fit arguments>]

(``jointdiff paper --tables "[6]"`` prints this for every pair.)

Writes ``<out>/domain_adaptation.json`` and prints a table. The config must save a last checkpoint
(``ModelCheckpoint(save_last=True)``) and use a logger that takes ``save_dir`` and ``name`` (CSV, W&B,
TensorBoard): each stage logs under ``<out>/stage1`` and ``<out>/stage2``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jointdiff.files import atomic_write_json
from jointdiff.workflow.lightning_cli import run_lightning_cli

ACCURACY_KEYS = ("test/acc", "test/acc_ema", "test/acc_raw")


def _fit_and_test(args: list[str]) -> tuple[dict, str, int]:
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it also sees this script's own arguments
    try:
        cli = run_lightning_cli(["fit", *args])
    finally:
        sys.argv = argv
    ckpt = cli.trainer.checkpoint_callback.last_model_path if cli.trainer.checkpoint_callback else ""
    if not ckpt:
        raise RuntimeError("the config must save a last checkpoint (ModelCheckpoint with save_last: true)")
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return {k: float(results[k]) for k in ACCURACY_KEYS if k in results}, ckpt, cli.trainer.global_step


def check_stage2_lr(stage2_lr: float | None) -> None:
    """Before stage 1 trains, not when stage 2 builds its AdamW minutes later."""
    if stage2_lr is not None and not stage2_lr > 0:
        raise ValueError(f"--stage2_lr must be a positive learning rate, got {stage2_lr}")


def run(config: str, out: str, stage2_steps: int | None = None, extra: list[str] | None = None,
        stage2_lr: float | None = None) -> dict:
    """Both stages; returns (and writes) the summary."""
    check_stage2_lr(stage2_lr)
    common = ["-c", config, *(extra or [])]
    logs = ["--trainer.logger.init_args.save_dir", out]
    before, ckpt1, steps1 = _fit_and_test([
        *common, *logs, "--trainer.logger.init_args.name", "stage1", "--trainer.default_root_dir", f"{out}/stage1",
        "--data.init_args.stage", "source",
    ])
    after, ckpt2, steps2 = _fit_and_test([
        *common, *logs, "--trainer.logger.init_args.name", "stage2", "--trainer.default_root_dir", f"{out}/stage2",
        "--data.init_args.stage", "target", "--model.init_args.init_from", ckpt1,
        "--model.init_args.skip_classifier_loss", "true", "--trainer.max_steps", str(stage2_steps or steps1),
        *(["--model.init_args.lr", str(stage2_lr)] if stage2_lr is not None else []),
    ])
    summary = {
        "config": config, "extra_args": extra or [], "stage1": {"steps": steps1, "checkpoint": ckpt1},
        "stage2": {"steps": steps2, "checkpoint": ckpt2, **({"lr": stage2_lr} if stage2_lr is not None else {})},
        "target_test_before": before, "target_test_after": after,
    }
    atomic_write_json(summary, Path(out) / "domain_adaptation.json")
    print(f"\n{'target test accuracy':<24}{'before (stage 1)':>18}{'after (stage 2)':>18}")
    for k in ACCURACY_KEYS:
        if k in before:
            print(f"{k:<24}{before[k]:>18.4f}{after[k]:>18.4f}")
    print(f"stage 1: {steps1} steps, stage 2: {steps2} steps; summary in {Path(out) / 'domain_adaptation.json'}")
    return summary


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True,
                        help="first config (the paper's runs: configs/base/default.yaml, the rest after --)")
    parser.add_argument("--out", default=None, help="run folder (default runs/domain_adaptation/<config name>)")
    parser.add_argument("--stage2_steps", type=int, default=None, help="stage-2 steps (default: as stage 1, D15)")
    parser.add_argument("--stage2_lr", type=float, default=None, help="stage-2 learning rate (default: the config's)")
    a = parser.parse_args(own)
    try:
        check_stage2_lr(a.stage2_lr)
    except ValueError as error:
        parser.error(str(error))  # one line and exit status 2, before any data is read
    run(a.config, a.out or f"runs/domain_adaptation/{Path(a.config).stem}", a.stage2_steps, extra, a.stage2_lr)


if __name__ == "__main__":
    main()
