"""The sampling benchmark's code paths (experiments/bench/bench_sampling.py) run: one engine step of every sampler,
the respaced joint row and the phases of the joint step."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_row_runs(monkeypatch, capsys, one_thread):
    path = REPO / "experiments" / "bench" / "bench_sampling.py"
    spec = importlib.util.spec_from_file_location("bench_sampling", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["bench_sampling.py", "--size", "demo", "--batch", "2", "--rounds", "1",
                                      "--warmup", "0", "--phases"])
    bench.main()
    out = capsys.readouterr().out
    for row in ("unconditional", "ddim", "joint conditional", "joint respaced", "classifier guidance",
                "enc+head+backward"):
        assert f"\n{row}" in out or f"\n  {row}" in out, row
