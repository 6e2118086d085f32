"""Precision and recall for distributions, PRD (Sajjadi et al. 2018), as the paper reports it (docs/design.md §10).

Protocol (the authors' ``evaluations/prd.py``, Google's reference implementation):

1. the larger set is subsampled (seeded) to the size of the smaller one (the paper: reals → number generated);
2. the union is clustered with ``MiniBatchKMeans(20 clusters, n_init=10)``; each set becomes a histogram over the
   clusters (``Q`` = generated, ``P`` = real);
3. the PRD curve over 1001 slopes ``λ = tan θ``, ``θ ∈ (0, π/2)``: ``α(λ) = Σ_ω min(λ·P(ω), Q(ω))``,
   ``β(λ) = α(λ)/λ``;
4. steps 2–3 are repeated for 10 clusterings and the curves averaged;
5. summaries: **precision = max F_{1/8}**, **recall = max F_8**, ``F_b(α, β) = (1+b²)αβ / (b²α + β)``.

Argument order: ``prd_precision_recall(fake, real)`` is the standard convention (generated = "eval" distribution,
real = "reference"). The authors' code passes the real features as "eval" and the generated ones as "reference",
and then labels F_8 as precision; the two swaps cancel, so its numbers equal this function's. Swapping our arguments
swaps precision and recall exactly (the clustering is done on the union in canonical order, so it does not depend
on the argument order either).

Departures from the reference, both for reproducibility: the k-means runs are seeded (``seed + run``) instead of
unseeded, and the union is clustered in canonical row order (``feature_sets.canonical_order``).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans

from jointdiff.metrics.feature_sets import FeatureSetMetric, canonical_order


def prd_curve(eval_dist: np.ndarray, ref_dist: np.ndarray, num_angles: int = 1001, epsilon: float = 1e-10):
    """PRD curve ``(α, β)`` (each (num_angles,)) of histogram ``eval_dist`` (Q) against ``ref_dist`` (P)."""
    if num_angles < 3:
        raise ValueError(f"num_angles must be >= 3, got {num_angles}")
    slopes = np.tan(np.linspace(epsilon, np.pi / 2 - epsilon, num_angles))  # λ, symmetric: λ_i · λ_{n-1-i} = 1
    precision = np.minimum(ref_dist[None, :] * slopes[:, None], eval_dist[None, :]).sum(axis=1)
    recall = precision / slopes
    if max(precision.max(), recall.max()) > 1.001:
        raise ValueError("PRD curve exceeds 1: the histograms are not normalised")
    return np.clip(precision, 0, 1), np.clip(recall, 0, 1)


def f_beta(precision: np.ndarray, recall: np.ndarray, beta: float, epsilon: float = 1e-10) -> np.ndarray:
    return (1 + beta**2) * (precision * recall) / (beta**2 * precision + recall + epsilon)


def prd_summary(precision_curve: np.ndarray, recall_curve: np.ndarray, beta: float = 8) -> tuple[float, float]:
    """(precision, recall) = (max F_{1/β}, max F_β) of a PRD curve."""
    return (
        float(np.max(f_beta(precision_curve, recall_curve, 1 / beta))),
        float(np.max(f_beta(precision_curve, recall_curve, beta))),
    )


def cluster_histograms(
    fake: np.ndarray, real: np.ndarray, num_clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the union of both sets once; return the two normalised histograms (Q of ``fake``, P of ``real``)."""
    union = np.concatenate([fake, real]).astype(np.float64)  # the reference clusters in float64
    is_fake = np.concatenate([np.ones(len(fake), bool), np.zeros(len(real), bool)])
    order = canonical_order(torch.from_numpy(union)).numpy()  # clustering independent of the argument order
    kmeans = MiniBatchKMeans(n_clusters=num_clusters, n_init=10, random_state=seed)
    labels = np.empty(len(union), dtype=np.int64)
    labels[order] = kmeans.fit(union[order]).labels_
    q = np.bincount(labels[is_fake], minlength=num_clusters) / is_fake.sum()
    p = np.bincount(labels[~is_fake], minlength=num_clusters) / (~is_fake).sum()
    return q, p


def balanced_subsample(fake: np.ndarray, real: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Subsample the larger set (seeded, keeping its order) to the size of the smaller one."""
    rng = np.random.default_rng(seed)
    n = min(len(fake), len(real))

    def take(x: np.ndarray) -> np.ndarray:
        return x if len(x) == n else x[np.sort(rng.choice(len(x), n, replace=False))]

    return take(fake), take(real)


def prd_precision_recall(
    fake: np.ndarray | torch.Tensor,
    real: np.ndarray | torch.Tensor,
    num_clusters: int = 20,
    num_angles: int = 1001,
    num_runs: int = 10,
    beta: float = 8,
    seed: int = 0,
) -> tuple[float, float]:
    """(precision, recall) = (max F_{1/8}, max F_8) of the run-averaged PRD curve of generated ``fake`` against
    ``real`` (both (N, D) feature arrays; see the module docs for the protocol)."""
    fake = fake.cpu().numpy() if isinstance(fake, torch.Tensor) else np.asarray(fake)
    real = real.cpu().numpy() if isinstance(real, torch.Tensor) else np.asarray(real)
    fake, real = balanced_subsample(fake, real, seed)
    if 2 * len(fake) < num_clusters:
        raise ValueError(f"PRD with {num_clusters} clusters needs at least {num_clusters // 2 + 1} samples per set, "
                         f"got {len(fake)}")
    curves = []
    for run in range(num_runs):
        q, p = cluster_histograms(fake, real, num_clusters, seed + run)
        curves.append(prd_curve(q, p, num_angles))
    precision_curve = np.mean([c[0] for c in curves], axis=0)
    recall_curve = np.mean([c[1] for c in curves], axis=0)
    return prd_summary(precision_curve, recall_curve, beta)


class PRDPrecisionRecall(FeatureSetMetric):
    """``compute() -> {"precision": max F_{1/8}, "recall": max F_8}`` (float64 scalar tensors); see module docs."""

    higher_is_better = True

    def __init__(
        self, num_clusters: int = 20, num_angles: int = 1001, num_runs: int = 10, beta: float = 8, seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_clusters < 2 or num_runs < 1 or beta <= 0:
            raise ValueError("PRD needs num_clusters >= 2, num_runs >= 1 and beta > 0")
        self.num_clusters, self.num_angles, self.num_runs = num_clusters, num_angles, num_runs
        self.beta, self.seed = beta, seed

    def compute(self) -> dict[str, torch.Tensor]:
        fake, real = self.feature_sets()
        precision, recall = prd_precision_recall(
            fake, real, self.num_clusters, self.num_angles, self.num_runs, self.beta, self.seed
        )
        return {
            "precision": torch.tensor(precision, dtype=torch.float64),
            "recall": torch.tensor(recall, dtype=torch.float64),
        }
