"""The FLOP-count benchmark's code path (experiments/bench/bench_flops.py) runs, and its breakdown adds up."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_flop_count_of_the_paper_fmnist_step_adds_up():
    spec = importlib.util.spec_from_file_location("bench_flops", REPO / "experiments" / "bench" / "bench_flops.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    batch, by_kind, total = bench.count("fmnist")
    assert batch == 128 and total == sum(by_kind.values())
    assert by_kind["convolution"] > by_kind["attention"] > 0  # full-resolution attention is counted
