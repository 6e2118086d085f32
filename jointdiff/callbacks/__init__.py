"""Lightning callbacks: sample grids, metrics JSON, generative evaluation."""

from jointdiff.callbacks.evaluation import GenerativeEvaluation
from jointdiff.callbacks.logging import MetricsJSON
from jointdiff.callbacks.samples import ClassConditionalGrid, SampleGrid

__all__ = ["ClassConditionalGrid", "GenerativeEvaluation", "MetricsJSON", "SampleGrid"]
