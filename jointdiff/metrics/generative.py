"""The generative scores of one set of samples against one set of real images, in one feature space: FID, k-NN
precision/recall and PRD precision/recall, under the result keys every evaluation logs
(``<prefix>/gen_<extractor>/<metric>_<convention>``). Used by the training-time evaluation (which feeds the metrics
batch by batch on every process) and by ``jointdiff score`` (one process, a sample file)."""

from __future__ import annotations

import torch

from jointdiff.metrics.frechet import FrechetDistance
from jointdiff.metrics.knn_precision_recall import KNNPrecisionRecall
from jointdiff.metrics.prd import PRDPrecisionRecall


def generative_metrics(dim: int, knn: dict, prd: dict, seed: int, device: torch.device | str = "cpu") -> dict:
    """Fresh ``{"fid", "knn", "prd"}`` metrics: ``update(features, real=…)`` each, then :func:`generative_results`."""
    return {
        "fid": FrechetDistance(dim).to(device),
        "knn": KNNPrecisionRecall(**knn).to(device),
        "prd": PRDPrecisionRecall(**prd, seed=seed).to(device),
    }


def generative_results(metrics: dict, prefix: str, extractor: str, convention: str) -> dict[str, float]:
    knn, prd = metrics["knn"].compute(), metrics["prd"].compute()
    base = f"{prefix}/gen_{extractor}"
    return {
        f"{base}/fid_{convention}": float(metrics["fid"].compute()),
        f"{base}/precision_knn_{convention}": float(knn["precision"]),
        f"{base}/recall_knn_{convention}": float(knn["recall"]),
        f"{base}/precision_prd_{convention}": float(prd["precision"]),
        f"{base}/recall_prd_{convention}": float(prd["recall"]),
    }
