"""Lightning callbacks: sample grids, metrics JSON."""

from jointdiff.callbacks.logging import MetricsJSON
from jointdiff.callbacks.samples import SampleGrid

__all__ = ["MetricsJSON", "SampleGrid"]
