"""FLOPs of one joint training step of each paper configuration, by kind of operation, counted on the meta device
(no data, no time: torch's ``FlopCounterMode`` reads the shapes). The GPU performance model of docs/benchmarks.md
starts from this table: what a step must compute, where it is spent, and the time it would take at a given fraction
of the GPU's peak. Forward and backward of ``JointDiffusion.training_step`` (the diffusion pass and the classifier's
encoder pass), classifier augmentation off (Kornia's ops are elementwise, no FLOPs counted there either way).

    python experiments/bench/bench_flops.py            # the three paper configurations at their paper batch sizes
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from jointdiff.models import JointDiffusion

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {  # name: (dataset fragment of the paper configs, image size, channels, classes, task, paper batch)
    "fmnist": ("fashion_mnist", 28, 1, 10, "multiclass", 128),
    "cifar10": ("cifar10", 32, 3, 10, "multiclass", 256),
    "celeba": ("celeba", 64, 3, 40, "multilabel", 128),
}
PEAK_TFLOPS = {"bf16": 790.0, "fp32": 67.0}  # the lent H200 (experiments/gpu/device_run.py)


def kind(op: str) -> str:
    if "convolution" in op:
        return "convolution"
    if "attention" in op or op in ("aten.bmm", "aten.baddbmm"):
        return "attention"
    if op in ("aten.mm", "aten.addmm", "aten.linear"):
        return "linear"
    return "other"


def count(name: str) -> tuple[int, dict[str, int], int]:
    fragment, size, channels, classes, task, batch = CONFIGS[name]
    unet = yaml.safe_load((REPO / f"configs/paper/data/{fragment}.yaml").read_text())["model"]["init_args"]
    with torch.device("meta"):
        model = JointDiffusion(**{**unet, "classifier_augmentation": "off"}, image_size=size, channels=channels,
                               num_classes=classes, task=task)
        model.log = lambda *a, **k: None
        model._may_have_unlabelled = False  # fully labelled data, as setup() finds it (no per-step label check)
        x = torch.rand(batch, channels, size, size) * 2 - 1
        y = torch.randint(0, 2, (batch, classes)) if task == "multilabel" else torch.randint(0, classes, (batch,))
        with FlopCounterMode(display=False) as counter:
            model.training_step((x, y), 0).backward()
    by_kind: dict[str, int] = defaultdict(int)
    for op, flops in counter.get_flop_counts()["Global"].items():
        by_kind[kind(str(op))] += flops
    return batch, dict(by_kind), counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    print(f"{'config':8}{'batch':>6}{'TFLOP/step':>12}{'conv':>7}{'attn':>7}{'linear':>8}"
          f"{'ms @ bf16 peak':>16}{'ms @ 40% bf16':>15}{'ms @ fp32 peak':>16}")
    for name in args.configs.split(","):
        batch, by_kind, total = count(name)
        share = {k: by_kind.get(k, 0) / total for k in ("convolution", "attention", "linear")}
        t = total / 1e12
        bf16_ms, fp32_ms = 1e3 * t / PEAK_TFLOPS["bf16"], 1e3 * t / PEAK_TFLOPS["fp32"]
        print(f"{name:8}{batch:>6}{t:>12.2f}{share['convolution']:>7.0%}{share['attention']:>7.0%}"
              f"{share['linear']:>8.0%}{bf16_ms:>16.2f}{bf16_ms / 0.4:>15.2f}{fp32_ms:>16.1f}")


if __name__ == "__main__":
    main()
