"""Time of the generative metrics at evaluation size (10k vs 10k), with a project classifier as the extractor.

    export JOINTDIFF_DATA_ROOT=/work/shared/data
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/bench/bench_metrics_eval.py \
        --classifier runs/evidence/fmnist_classifier/version_0/checkpoints/last.ckpt --n 10000

Real set: the first ``n`` Fashion-MNIST test images. "Generated" stand-in: ``n_generated`` training images
(seeded), so the scores printed are the floor a perfect generator would reach with this extractor and these counts.
Times every step of an evaluation except sampling: feature extraction (both sets), FID, k-NN precision/recall
(float64 distances), PRD (20 clusters × 10 runs). Baselines in the same run: torch-fidelity's k-NN
precision/recall (``save_cpu_ram`` mode, same chunk) and torchmetrics' FID update+compute on the same features.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True, help="checkpoint of a project classifier")
    parser.add_argument("--n", type=int, default=10000, help="real (test) images")
    parser.add_argument("--n_generated", type=int, default=None, help="training images standing in for samples "
                        "(default: --n); set it to an evaluation's sample count to get that evaluation's floor")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--convention", default="standard", choices=["standard", "reference"])
    args = parser.parse_args()

    from torch_fidelity.metric_prc import calculate_precision_recall_part
    from torchmetrics.image.fid import FrechetInceptionDistance

    from jointdiff.data import FashionMNISTDataModule
    from jointdiff.metrics import FrechetDistance, KNNPrecisionRecall, PRDPrecisionRecall
    from jointdiff.models.extractors import load_classifier_features

    dm = FashionMNISTDataModule(image_size=28)
    dm.setup("fit")
    extractor = load_classifier_features(args.classifier)
    real_idx = torch.arange(min(args.n, len(dm.test_set)))
    n_fake = args.n_generated or args.n
    fake_idx = torch.randperm(len(dm.train_set), generator=torch.Generator().manual_seed(0))[:n_fake].sort().values

    def features(dataset, idx) -> torch.Tensor:
        return torch.cat([extractor(dataset.__getitems__(idx[s: s + args.batch_size].tolist())[0], args.convention)
                          for s in range(0, len(idx), args.batch_size)])

    rows = []

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - start))
        return out

    real = timed(f"features: {len(real_idx)} real", lambda: features(dm.test_set, real_idx))
    fake = timed(f"features: {len(fake_idx)} stand-in", lambda: features(dm.train_set, fake_idx))

    def feed(metric):
        for s in range(0, len(real), args.batch_size):
            metric.update(real[s: s + args.batch_size], real=True)
        for s in range(0, len(fake), args.batch_size):
            metric.update(fake[s: s + args.batch_size], real=False)
        return metric.compute()

    fid = timed("FID (jointdiff, update+compute)", lambda: float(feed(FrechetDistance(extractor.dim))))

    class Identity(torch.nn.Module):
        num_features = extractor.dim

        def forward(self, x):
            return x

    def torchmetrics_fid():
        m = FrechetInceptionDistance(feature=Identity())
        m.set_dtype(torch.float64)
        return float(feed(m))

    fid_tm = timed("  baseline: torchmetrics FID", torchmetrics_fid)
    knn = timed("k-NN P/R (jointdiff, float64)", lambda: feed(KNNPrecisionRecall(chunk_size=args.chunk)))
    knn_tf = timed("  baseline: torch-fidelity P/R",
                   lambda: calculate_precision_recall_part(fake, real, neighborhood=3, batch_size=args.chunk))
    prd = timed("PRD P/R (20 clusters, 10 runs)", lambda: feed(PRDPrecisionRecall()))

    print(f"extractor {extractor.name} ({extractor.describe()['class']}, D = {extractor.dim}), "
          f"convention {args.convention}, {len(real_idx)} real vs {len(fake_idx)} stand-in, "
          f"threads = {torch.get_num_threads()}")
    for name, seconds in rows:
        print(f"  {name:<40} {seconds:8.1f} s")
    metric_total = sum(s for n, s in rows if not n.startswith(("  ", "features")))
    print(f"  {'total, metrics only (no baselines)':<40} {metric_total:8.1f} s")
    print(f"scores of training images as 'generated' (the floor for this extractor and n): FID {fid:.4f} "
          f"(torchmetrics {fid_tm:.4f}), k-NN precision {float(knn['precision']):.4f} "
          f"recall {float(knn['recall']):.4f} "
          f"(torch-fidelity {knn_tf[0]:.4f} / {knn_tf[1]:.4f}), PRD precision {float(prd['precision']):.4f} "
          f"recall {float(prd['recall']):.4f}")


if __name__ == "__main__":
    main()
