"""The training benchmark's code paths (experiments/bench/bench_train.py) run: the bare step of the demo's model,
plain and with the shared encoder pass, and the ``+L`` row that times the real Trainer loop (``+L+F`` with the
divergence check)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "experiments" / "bench" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_demo_config_is_the_main_jobs_model_and_its_plain_path_does_not_share():
    bench = _bench()
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["model"]["init_args"]
    plain, shared = bench.model_args("demo", "ours"), bench.model_args("demo", "ours-shared")
    for key in ("model_channels", "classifier_weight", "noisy_classifier", "diffusion_steps", "dropout"):
        assert plain[key] == shared[key] == demo[key], key
    assert plain["share_encoder_pass"] is False and shared["share_encoder_pass"] is True


def test_bare_and_lightning_rows_run(data_root, one_thread):
    bench = _bench()
    bare = bench.measure("demo", "ours-shared", batch=4, steps=1, warmup=1, device="cpu")
    in_trainer = bench.measure_lightning("demo", "ours-shared", batch=4, steps=2, warmup=1, device="cpu")
    checked = bench.measure_lightning("demo", "ours-shared", batch=4, steps=2, warmup=1, device="cpu", finite=True)
    assert bare["impl"] == "ours-shared" and in_trainer["impl"] == "ours-shared+L"
    assert checked["impl"] == "ours-shared+L+F" and checked["s_per_step"] > 0
    assert bare["s_per_step"] > 0 and in_trainer["s_per_step"] > 0 and in_trainer["params"] == bare["params"]
