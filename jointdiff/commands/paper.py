"""``jointdiff paper``: the training runs behind the paper's tables, as commands to print, check or run.

    jointdiff paper --tables "[1]"                     # print Table 1's runs (dependencies first)
    jointdiff paper --tables "[1]" --quick --run       # run their CPU smoke variants here, one after another
    jointdiff paper --only "[cifar10/]" --check        # build every selected run (meta device) without training
    jointdiff report                                   # then tabulate whatever finished

The runs, their config compositions and run folders are listed in :mod:`jointdiff.workflow.paper`
(``runs/paper/<key>``, or ``runs/quick/<key>`` with ``--quick``). ``--run`` skips runs whose folder already holds a
tested ``metrics.json`` (``--force`` re-runs them). On a cluster, submit the printed ``jointdiff fit`` arguments with
``experiments/slurm/single_node.sbatch`` (docs/workflow.md).
"""

from __future__ import annotations

from jointdiff.workflow.reproduce import paper


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    CLI(paper, args=argv, as_positional=False, prog="jointdiff paper")

