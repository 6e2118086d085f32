"""Lightning callbacks: sample grids, metrics JSON, generative evaluation, and the research workflow's run record
and resolved config on W&B, and the plateau rule that ends a run."""

from jointdiff.callbacks.evaluation import GenerativeEvaluation
from jointdiff.callbacks.logging import MetricsJSON
from jointdiff.callbacks.plateau import StopOnPlateau
from jointdiff.callbacks.samples import ClassConditionalGrid, SampleGrid
from jointdiff.callbacks.workflow import RunRecord, WandbResolvedConfig

__all__ = ["ClassConditionalGrid", "GenerativeEvaluation", "MetricsJSON", "RunRecord", "SampleGrid",
           "StopOnPlateau", "WandbResolvedConfig"]
