"""Lightning callbacks: sample grids, metrics JSON, generative evaluation, and the research workflow's run record
and resolved config on W&B."""

from jointdiff.callbacks.evaluation import GenerativeEvaluation
from jointdiff.callbacks.logging import MetricsJSON
from jointdiff.callbacks.samples import ClassConditionalGrid, SampleGrid
from jointdiff.callbacks.workflow import RunRecord, WandbResolvedConfig

__all__ = ["ClassConditionalGrid", "GenerativeEvaluation", "MetricsJSON", "RunRecord", "SampleGrid",
           "WandbResolvedConfig"]
