"""Metrics on features: FID, k-NN precision/recall, PRD, accuracy and class hit rate, each checked against an
independent computation (scipy, numpy, torch-fidelity, torchmetrics, a linear program)."""

import numpy as np
import pytest
import torch
from conftest import fid_scipy, knn_scipy
from scipy.optimize import linprog

from jointdiff.metrics import FrechetDistance, KNNPrecisionRecall, PRDPrecisionRecall, accuracy_metrics
from jointdiff.metrics.accuracy import hits
from jointdiff.metrics.feature_sets import canonical
from jointdiff.metrics.knn_precision_recall import knn_precision_recall
from jointdiff.metrics.prd import cluster_histograms, prd_curve, prd_precision_recall, prd_summary

pytestmark = pytest.mark.usefixtures("one_thread")


def _features(n, d, shift=0.0, scale=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing * scale + shift).to(dtype)


def _feed(metric, fake, real, batch=37):
    for chunk in fake.split(batch):
        metric.update(chunk, real=False)
    for chunk in real.split(batch):
        metric.update(chunk, real=True)
    return metric.compute()


# FID ----------------------------------------------------------------------------------------------------------


def test_fid_matches_scipy_and_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    fake, real = _features(400, 24, shift=0.3, scale=1.3, seed=1), _features(500, 24, seed=2)
    ours = float(_feed(FrechetDistance(24), fake, real))
    assert ours > 1.0  # the sets differ: a test of ~0 would prove nothing
    assert ours == pytest.approx(fid_scipy(fake.numpy(), real.numpy()), abs=1e-4)

    class Identity(torch.nn.Module):
        num_features = 24

        def forward(self, x):
            return x

    tm = FrechetInceptionDistance(feature=Identity())
    tm.set_dtype(torch.float64)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    assert ours == pytest.approx(float(tm.compute()), abs=1e-4)


def test_fid_of_a_set_against_itself_is_zero_and_batching_does_not_matter():
    x = _features(300, 16, seed=3)
    assert abs(float(_feed(FrechetDistance(16), x, x))) < 1e-8
    y = _features(300, 16, shift=0.5, seed=4)
    a = float(_feed(FrechetDistance(16), x, y, batch=300))
    b = float(_feed(FrechetDistance(16), x[torch.randperm(300)], y, batch=7))
    assert a == pytest.approx(b, rel=1e-9)


def test_fid_rejects_bad_features():
    m = FrechetDistance(8)
    with pytest.raises(ValueError, match="D=8"):
        m.update(torch.zeros(4, 9), real=True)
    with pytest.raises(ValueError, match="NaN or inf"):
        m.update(torch.full((4, 8), float("nan")), real=True)
    m.update(torch.randn(4, 8), real=True)
    with pytest.raises(RuntimeError, match="at least 2"):
        m.compute()


# k-NN precision / recall --------------------------------------------------------------------------------------


def test_knn_precision_recall_matches_scipy_and_torch_fidelity():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    fake, real = _features(300, 10, shift=0.3, scale=0.85, seed=5), _features(350, 10, seed=6)
    p, r = knn_precision_recall(fake, real, k=3, chunk_size=64)
    assert 0.05 < p < 0.95 and 0.05 < r < 0.95  # neither trivially 0 nor 1
    ps, rs = knn_scipy(fake.numpy(), real.numpy())
    assert (p, r) == pytest.approx((ps, rs), abs=1e-4)
    pt, rt = calculate_precision_recall_full(fake, real, neighborhood=3, batch_size=10000)
    assert (p, r) == pytest.approx((pt, rt), abs=1e-4)


def test_knn_chunking_swap_and_identical_sets():
    fake, real = _features(200, 8, shift=0.5, seed=7), _features(230, 8, seed=8)
    full = knn_precision_recall(fake, real, chunk_size=10_000)
    assert knn_precision_recall(fake, real, chunk_size=7) == full
    assert knn_precision_recall(real, fake, chunk_size=13) == full[::-1]
    assert knn_precision_recall(real, real) == (1.0, 1.0)


def test_knn_metric_is_independent_of_feed_order():
    fake = _features(150, 6, shift=0.3, seed=9, dtype=torch.float32)
    real = _features(160, 6, seed=10, dtype=torch.float32)
    a = _feed(KNNPrecisionRecall(chunk_size=50), fake, real)
    b = _feed(KNNPrecisionRecall(chunk_size=50), fake[torch.randperm(150)], real[torch.randperm(160)], batch=11)
    assert float(a["precision"]) == float(b["precision"]) and float(a["recall"]) == float(b["recall"])
    p, r = knn_precision_recall(fake.double(), real.double())
    assert (float(a["precision"]), float(a["recall"])) == pytest.approx((p, r), abs=1e-12)


# PRD ----------------------------------------------------------------------------------------------------------
def _on_prd_frontier(q: np.ndarray, p: np.ndarray, alpha: float, beta: float) -> bool:
    """Definition 1 of Sajjadi et al.: (α, β) is attainable iff some distribution μ has βμ ≤ P and αμ ≤ Q.
    Solved as a linear feasibility problem, independently of the closed form ``Σ min(λP, Q)``."""
    n = len(q)
    res = linprog(np.zeros(n), A_ub=np.vstack([beta * np.eye(n), alpha * np.eye(n)]), b_ub=np.concatenate([p, q]),
                  A_eq=np.ones((1, n)), b_eq=[1.0], bounds=[(0, None)] * n, method="highs")
    return res.status == 0


def test_prd_curve_is_the_frontier_of_definition_1():
    rng = np.random.default_rng(0)
    q, p = rng.dirichlet(np.ones(12)), rng.dirichlet(np.ones(12) * 0.5)
    alpha, beta = prd_curve(q, p, num_angles=41)
    for a, b in zip(alpha[1:-1], beta[1:-1], strict=True):
        assert _on_prd_frontier(q, p, a * (1 - 1e-6), b * (1 - 1e-6))
        assert not _on_prd_frontier(q, p, a * (1 + 1e-3), b)  # nothing beyond the curve at this β
        assert not _on_prd_frontier(q, p, a, b * (1 + 1e-3))


def test_prd_analytic_half_coverage():
    # P uniform on two clusters, Q all on the first: Q is inside P (precision ~1), covers half of it (recall ~1/2).
    # Closed forms: max F_{1/8} at (α, β) = (1, 1/2): (65/64)·(1/2)/(1/64 + 1/2); max F_8 at the same point.
    alpha, beta = prd_curve(np.array([1.0, 0.0]), np.array([0.5, 0.5]))
    precision, recall = prd_summary(alpha, beta)
    assert precision == pytest.approx((65 / 64) * 0.5 / (1 / 64 + 0.5), abs=2e-3)
    assert recall == pytest.approx(65 * 0.5 / (64 + 0.5), abs=2e-3)


def test_prd_swapping_arguments_swaps_precision_and_recall():
    rng = np.random.default_rng(1)
    q, p = rng.dirichlet(np.ones(20)), rng.dirichlet(np.ones(20))
    a1, b1 = prd_curve(q, p)
    a2, b2 = prd_curve(p, q)
    np.testing.assert_allclose(a1, b2[::-1], atol=1e-12)  # slopes are symmetric: λ ↔ 1/λ
    np.testing.assert_allclose(b1, a2[::-1], atol=1e-12)
    # the full protocol too: the clustering of the union does not depend on the argument order
    fake, real = _features(120, 5, shift=0.8, seed=11).numpy(), _features(120, 5, seed=12).numpy()
    p1, r1 = prd_precision_recall(fake, real, num_clusters=6, num_runs=3)
    p2, r2 = prd_precision_recall(real, fake, num_clusters=6, num_runs=3)
    # equal up to the reference's ε=1e-10 in F_β's denominator, which F_{1/β} scales by β²
    assert (p1, r1) == pytest.approx((r2, p2), abs=1e-8)
    assert p1 != pytest.approx(r1, abs=1e-3)  # the two numbers differ, so the swap is visible


def test_prd_identical_sets_give_one_one_and_shifted_sets_less():
    x = _features(200, 6, seed=13).numpy()
    p, r = prd_precision_recall(x, x.copy(), num_clusters=10, num_runs=2)
    assert p == pytest.approx(1.0, abs=1e-6) and r == pytest.approx(1.0, abs=1e-6)
    p, r = prd_precision_recall(x + 3.0, x, num_clusters=10, num_runs=2)
    assert p < 0.5 and r < 0.5


def test_prd_histograms_follow_labels_and_metric_matches_function():
    fake, real = _features(90, 4, shift=1.0, seed=14), _features(110, 4, seed=15)
    q, p = cluster_histograms(fake.numpy(), real.numpy(), 5, seed=0)
    assert q.sum() == pytest.approx(1.0) and p.sum() == pytest.approx(1.0) and len(q) == 5
    m = _feed(PRDPrecisionRecall(num_clusters=5, num_runs=2, seed=3), fake.float(), real.float(), batch=17)
    expected = prd_precision_recall(canonical(fake.float()), canonical(real.float()), 5, num_runs=2, seed=3)
    assert (float(m["precision"]), float(m["recall"])) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="clusters"):
        prd_precision_recall(fake[:3], real[:3], num_clusters=20)


# accuracy -----------------------------------------------------------------------------------------------------
def test_accuracy_multiclass_and_multilabel_per_attribute():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)
    acc = accuracy_metrics("multiclass", 4)
    acc.update(logits, y)
    assert float(acc.compute()["acc"]) == pytest.approx((logits.argmax(1) == y).float().mean().item(), abs=1e-7)

    logits, y = torch.randn(40, 5, generator=g), torch.randint(0, 2, (40, 5), generator=g)
    acc = accuracy_metrics("multilabel", 5)
    acc.update(logits, y)
    out = acc.compute()
    per_attr = ((logits.numpy() > 0) == y.numpy().astype(bool)).mean(0)
    np.testing.assert_allclose(out["acc_per_attribute"].numpy(), per_attr, atol=1e-6)
    assert float(out["acc"]) == pytest.approx(per_attr.mean(), abs=1e-6)


def test_hits_definitions():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.5, 3.0], [1.0, 4.0, 0.0]])
    assert hits(logits, torch.tensor([0, 1, 1]), "multiclass").tolist() == [True, False, True]
    ml = torch.tensor([[1.0, -1.0], [-2.0, -0.5]])
    assert hits(ml, torch.tensor([[1, 1], [0, 0]]), "multilabel").tolist() == [[True, False], [True, True]]
    with pytest.raises(ValueError):
        hits(logits, torch.tensor([[0, 1, 1]]), "multiclass")
