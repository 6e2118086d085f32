"""The prepared GPU run (experiments/gpu/device_run.py) in its --dry-run form: every part runs on the CPU with tiny
networks and writes what the GPU run would write, so the script cannot rot between sessions that are lent a GPU."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_script_dry_run_writes_every_part(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments/gpu/device_run.py"), "--out", str(out), "--work", str(tmp_path / "w"),
         "--dry-run", "--budget-s", "3000"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "gpu_run.json").read_text())
    assert result["dry_run"] and result["env"]["device"] == "cpu"
    rows = result["throughput"]
    assert {(r["config"], r["mode"]) for r in rows} == {(c, m) for c in ("fmnist", "cifar10", "celeba")
                                                        for m in ("fp32", "bf16", "bf16+channels_last")}
    for r in rows:
        assert "error" not in r and r["img_per_s"] > 0 and r["tflop_per_step"] > 0, r
        # FLOPs of one step are the same at any precision; the fraction of peak is the achieved rate over the peak
        peak = result["peak_tflops"]["bf16" if r["mode"].startswith("bf16") else "fp32"]
        assert abs(r["fraction_of_peak"] - r["tflop_per_step"] / r["s_per_step"] / peak) < 1e-9
    flops = {name: c["tflop_per_step"] for name, c in result["flops"].items()}
    assert flops["celeba"] > flops["cifar10"] > flops["fmnist"]  # 64 px × 128 > 32 px × 256 (tiny width) > 28 px
    for c in result["flops"].values():  # the per-operator counts add up to the total
        assert abs(sum(c["by_operator"].values()) / 1e12 - c["tflop_per_step"]) < 1e-9
        assert any("convolution" in op for op in c["by_operator"])
    sampling = result["sampling"]
    for name in ("ddpm", "ddim", "joint", "joint_bf16", "guidance"):
        assert sampling[name]["s_per_step"] > 0, (name, sampling[name])
    assert sampling["ddpm"]["x_ddpm"] == 1.0 and sampling["auto_batch"]["batch"] >= 1
    assert result["data_path"]["loader_s_per_step"] > 0 and result["data_path"]["synthetic_s_per_step"] > 0
    training = result["training"]
    assert training["returncode"] == 0, training.get("error")
    assert training["steps"] == 2 and 0.0 <= training["curve"][-1]["test/acc"] <= 1.0
    with (out / "train_metrics.csv").open() as f:
        assert any(row.get("test/acc") for row in csv.DictReader(f))
    assert not [k for k in result if k.endswith("_error")]
