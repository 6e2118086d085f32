"""Peak memory and time of k-NN precision/recall at large N, against torch-fidelity's implementation in the same run.

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python experiments/bench/bench_metrics.py --n 50000 --dim 64 --chunk 1024

Each implementation runs in a fresh subprocess (so ``ru_maxrss`` is its own peak); the table shows the peak RSS
above the process's resident size right after the two (N, D) feature sets were created, i.e. the memory the metric
itself needs, and the wall time. Baseline: ``torch_fidelity.metric_prc.calculate_precision_recall_part`` (its
``save_cpu_ram`` mode) with the same chunk size, on float32 features like ours in ``float32`` mode.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

IMPLEMENTATIONS = ("jointdiff-float64", "jointdiff-float32", "torch-fidelity-part")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_one(impl: str, n: int, dim: int, chunk: int) -> dict:
    import torch
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    from jointdiff.metrics.knn_precision_recall import knn_precision_recall

    g = torch.Generator().manual_seed(0)
    fake = torch.randn(n, dim, generator=g) * 1.1 + 0.1
    real = torch.randn(n, dim, generator=g)
    base = _rss_bytes()
    start = time.perf_counter()
    if impl.startswith("jointdiff"):
        p, r = knn_precision_recall(fake, real, k=3, chunk_size=chunk, distance_dtype=impl.split("-")[1])
    else:
        p, r = calculate_precision_recall_part(fake, real, neighborhood=3, batch_size=chunk)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"impl": impl, "precision": p, "recall": r, "seconds": seconds, "extra_peak_mb": (peak - base) / 2**20,
            "features_mb": 2 * n * dim * 4 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50000, help="points per set (generated and real)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, help="(internal) run one implementation and print JSON")
    parser.add_argument("--only", nargs="*", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    args = parser.parse_args()
    if args.impl:
        print(json.dumps(run_one(args.impl, args.n, args.dim, args.chunk)))
        return
    rows = []
    for impl in args.only:
        cmd = [sys.executable, __file__, "--impl", impl, "--n", str(args.n), "--dim", str(args.dim),
               "--chunk", str(args.chunk)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(f"  done: {impl}", file=sys.stderr, flush=True)
    baseline = next((r for r in rows if r["impl"] == "torch-fidelity-part"), rows[0])
    print(f"k-NN precision/recall (k=3), N = {args.n} generated × {args.n} real, D = {args.dim}, chunk = {args.chunk}")
    print(f"feature tensors: {rows[0]['features_mb']:.0f} MB (not counted below)")
    header = ("implementation", "precision", "recall", "extra peak MB", "× base", "seconds", "× base")
    print("".join(f"{h:<22}" if i == 0 else f"{h:>{(10, 10, 15, 8, 10, 8)[i - 1]}}" for i, h in enumerate(header)))
    for r in rows:
        print(f"{r['impl']:<22}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['extra_peak_mb']:>15.0f}"
              f"{r['extra_peak_mb'] / baseline['extra_peak_mb']:>8.2f}{r['seconds']:>10.1f}"
              f"{r['seconds'] / baseline['seconds']:>8.2f}")


if __name__ == "__main__":
    main()
