"""``jointdiff report``: the finished runs under ``runs/`` as the paper's tables, our numbers beside the paper's.

    jointdiff report                                  # every run under runs/ → runs/report/report.md (+ plots)
    jointdiff report --roots "[runs/quick]" --output runs/report_quick

Runs are found by their ``metrics.json`` and classified by their saved ``config.yaml`` (model class, λ, noisy
classifier, DataModule, labelled share, domain-adaptation stage; :mod:`jointdiff.workflow.results`), so it does not
matter how they were launched. A cell shows ``ours (paper)``; when several runs fit a cell, the longest-trained
(then newest) one is shown, and every run used is listed under its table with its folder and training steps:
CPU-budget runs are far from the paper's budgets and their numbers are not the paper's claims. Generative scores
are taken from the paper-comparable evaluation when it exists (Inception features, the authors' input
convention, PRD precision/recall); any other feature space is marked †. Plots: precision/recall against α
(α sweeps) and accuracy against the labelled share (semi-supervised runs).
"""

from __future__ import annotations

from jointdiff.workflow.report import report


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    CLI(report, args=argv, as_positional=False, prog="jointdiff report")

