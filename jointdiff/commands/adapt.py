"""``jointdiff adapt``: domain adaptation in two stages (or one), target (and source) test accuracy before and after.

    jointdiff adapt --config configs/base/default.yaml --out runs/paper/table6/usps_mnist/joint \\
        -- -c configs/paper/data/da_usps_mnist.yaml -c configs/paper/models/joint.yaml
    jointdiff adapt ... --head_statistics target        # stage 2: the frozen head's BatchNorm follows the target
    jointdiff adapt ... --stage2_data source             # the source control: stage 2 on the source images
    jointdiff adapt ... --mode simultaneous              # one stage: labelled source + unlabelled target
    jointdiff adapt ... --until_plateau                  # each stage until its validation curve is flat
    jointdiff adapt ... --stage1 runs/a/stage1.json --curve_every 500   # another arm from the same stage 1

Everything after ``--`` goes to both stages' ``jointdiff fit``. Writes ``<out>/domain_adaptation.json``, logs under
``<out>/stage1`` and ``<out>/stage2``, and prints a table (the run: :mod:`jointdiff.workflow.domain_adaptation`).
The config must save a last checkpoint (``ModelCheckpoint(save_last=True)``) and use a logger that takes
``save_dir`` and ``name`` (CSV, W&B, TensorBoard).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jointdiff.workflow.domain_adaptation import Plateau, check_stage2_args, run, run_simultaneous


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
    parser.add_argument("--until_plateau", action="store_true",
                        help="each stage until its validation curve is flat (stage 1 on the source's held-out part)")
    parser.add_argument("--plateau_every", type=int, default=Plateau.every, help="--until_plateau: validate every")
    parser.add_argument("--plateau_min_steps", type=int, default=Plateau.min_steps,
                        help="--until_plateau: stage 1's fewest steps (stage 2: stage 1's steps)")
    parser.add_argument("--plateau_max_steps", type=int, default=Plateau.max_steps,
                        help="--until_plateau: most steps of each stage")
    parser.add_argument("--stage1", default=None,
                        help="stage1.json of a finished stage 1 (an earlier run's <out>/stage1.json): stage 2 starts "
                             "from its checkpoint, so that several arms share one stage 1")
    parser.add_argument("--curve_every", type=int, default=None,
                        help="stage 2 keeps a checkpoint every that many steps, each tested on the target afterwards")
    a = parser.parse_args(own)
    try:
        check_stage2_args(a.stage2_lr, a.head_statistics, a.stage2_data)
        plateau = Plateau(a.plateau_every, a.plateau_min_steps, a.plateau_max_steps) if a.until_plateau else None
        if plateau and a.stage2_steps is not None:
            raise ValueError("--stage2_steps and --until_plateau exclude each other")
        if a.curve_every is not None and a.curve_every < 1:
            raise ValueError(f"--curve_every must be >= 1, got {a.curve_every}")
        stage1 = None if a.stage1 is None else json.loads(Path(a.stage1).read_text())
        if plateau and a.mode == "simultaneous":
            raise ValueError("--until_plateau is for --mode two_stage (give the simultaneous stage its steps)")
    except (ValueError, OSError) as error:
        parser.error(str(error))  # one line and exit status 2, before any data is read
    if a.mode == "simultaneous":
        run_simultaneous(a.config, a.out, extra, a.semi_supervised_mode)
        return
    run(a.config, a.out, a.stage2_steps, extra, a.stage2_lr, a.head_statistics, a.stage2_data, a.adabn == "true",
        plateau, stage1, a.curve_every)
