"""``jointdiff adapt``: domain adaptation in two stages (or one), target (and source) test accuracy before and after.

    jointdiff adapt --config configs/base/default.yaml --out runs/paper/table6/usps_mnist/joint \\
        -- -c configs/paper/data/da_usps_mnist.yaml -c configs/paper/models/joint.yaml
    jointdiff adapt ... --head_statistics target        # stage 2: the frozen head's BatchNorm follows the target
    jointdiff adapt ... --stage2_data source             # the source control: stage 2 on the source images
    jointdiff adapt ... --mode simultaneous              # one stage: labelled source + unlabelled target

Everything after ``--`` goes to both stages' ``jointdiff fit``. Writes ``<out>/domain_adaptation.json``, logs under
``<out>/stage1`` and ``<out>/stage2``, and prints a table (the run: :mod:`jointdiff.workflow.domain_adaptation`).
The config must save a last checkpoint (``ModelCheckpoint(save_last=True)``) and use a logger that takes
``save_dir`` and ``name`` (CSV, W&B, TensorBoard).
"""

from __future__ import annotations

import argparse

from jointdiff.workflow.domain_adaptation import check_stage2_args, run, run_simultaneous


def main(argv: list[str]) -> None:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="jointdiff adapt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True,
                        help="first config (the paper's runs: configs/base/default.yaml, the rest after --)")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--mode", default="two_stage", choices=["two_stage", "simultaneous"],
                        help="two stages (source, then target without labels), or one semi-supervised stage")
    parser.add_argument("--semi_supervised_mode", default="buffer", choices=["buffer", "stream"],
                        help="--mode simultaneous: how the labelled source reaches the classifier")
    parser.add_argument("--stage2_steps", type=int, default=None, help="stage-2 steps (default: as stage 1, D15)")
    parser.add_argument("--stage2_lr", type=float, default=None, help="stage-2 learning rate (default: the config's)")
    parser.add_argument("--head_statistics", default="frozen", choices=["frozen", "target"],
                        help="what the frozen head's BatchNorm statistics follow in stage 2")
    parser.add_argument("--stage2_data", default="target", choices=["target", "source"],
                        help="stage 2's images: the target, or the source (the control)")
    parser.add_argument("--adabn", default="true", choices=["true", "false"],
                        help="also score stage 2's model after AdaBN on its training images")
    a = parser.parse_args(own)
    try:
        check_stage2_args(a.stage2_lr, a.head_statistics, a.stage2_data)
    except ValueError as error:
        parser.error(str(error))  # one line and exit status 2, before any data is read
    if a.mode == "simultaneous":
        run_simultaneous(a.config, a.out, extra, a.semi_supervised_mode)
        return
    run(a.config, a.out, a.stage2_steps, extra, a.stage2_lr, a.head_statistics, a.stage2_data, a.adabn == "true")
