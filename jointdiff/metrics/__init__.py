"""Evaluation metrics: FID, k-NN and PRD precision/recall, accuracy and class hit rate, and their feature
extractors (see docs/evaluation.md). All metrics are torchmetrics ``Metric`` objects, synced across processes."""

from jointdiff.metrics.accuracy import ClassHitRate, accuracy_metrics
from jointdiff.metrics.extractors import (
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    InceptionWeightsNotFoundError,
)
from jointdiff.metrics.frechet import FrechetDistance, frechet_distance
from jointdiff.metrics.knn_precision_recall import KNNPrecisionRecall, knn_precision_recall
from jointdiff.metrics.prd import PRDPrecisionRecall, prd_precision_recall

__all__ = [
    "ClassHitRate",
    "ClassifierFeatures",
    "FeatureExtractor",
    "FrechetDistance",
    "InceptionFeatures",
    "InceptionWeightsNotFoundError",
    "KNNPrecisionRecall",
    "PRDPrecisionRecall",
    "accuracy_metrics",
    "frechet_distance",
    "knn_precision_recall",
    "prd_precision_recall",
]
