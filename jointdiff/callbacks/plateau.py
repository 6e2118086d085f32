"""Train until a validation curve is flat: the plateau rule of the designed domain-adaptation experiment
(docs/results.md, "Domain adaptation decided").

A metric is *flat* when the mean of its last fifth of validations so far is within a tolerance of the mean of the
fifth before it: absolute (``val/acc_ema`` within 0.01) or relative to the earlier mean (``val/diffusion_loss``
within 2 %). :class:`StopOnPlateau` stops fitting at the first validation, at or after ``min_steps``, where every
monitored metric is flat (``max_steps`` of the Trainer stays the cap). Written here because Lightning's
``EarlyStopping`` compares single values against the best one with a patience, not windowed means; the rule is
:func:`is_flat`, a pure function.
"""

from __future__ import annotations

import math

import lightning as L


def is_flat(history: list[float], tolerance: float, relative: bool = False, fraction: float = 0.2) -> bool:
    """Whether the mean of the last ``fraction`` of ``history`` (at least one value) is within ``tolerance`` of the
    mean of the same number of values before it (× that earlier mean's magnitude when ``relative``). False while
    ``history`` holds fewer than two such windows."""
    k = max(1, math.floor(len(history) * fraction))
    if len(history) < 2 * k:
        return False
    last = sum(history[-k:]) / k
    before = sum(history[-2 * k:-k]) / k
    return abs(last - before) <= tolerance * (abs(before) if relative else 1.0)


class StopOnPlateau(L.Callback):
    """Stops fitting once every monitored validation metric is flat (module docstring).

    Args:
        absolute: metric name → absolute tolerance (e.g. ``{"val/acc_ema": 0.01}``).
        relative: metric name → relative tolerance (e.g. ``{"val/diffusion_loss": 0.02}``).
        min_steps: no stop before this global step.
        fraction: the window, a fraction of the validations so far (a fifth).

    ``history`` (metric → values, one per validation) and ``stopped_at_step`` are kept in checkpoints, so a resumed
    run applies the rule to its whole curve; a monitored metric missing from a validation is an error, not a
    silent "never flat".
    """

    def __init__(self, absolute: dict[str, float] | None = None, relative: dict[str, float] | None = None,
                 min_steps: int = 0, fraction: float = 0.2):
        self.tolerances = {**{k: (v, False) for k, v in (absolute or {}).items()},
                           **{k: (v, True) for k, v in (relative or {}).items()}}
        if not self.tolerances:
            raise ValueError("StopOnPlateau needs at least one metric in absolute= or relative=")
        if any(v < 0 for v, _ in self.tolerances.values()) or min_steps < 0 or not 0 < fraction <= 0.5:
            raise ValueError("tolerances and min_steps must be >= 0 and 0 < fraction <= 0.5")
        self.min_steps, self.fraction = min_steps, fraction
        self.history: dict[str, list[float]] = {k: [] for k in self.tolerances}
        self.steps: list[int] = []
        self.stopped_at_step: int | None = None

    def flat(self) -> dict[str, bool]:
        return {k: is_flat(self.history[k], tol, rel, self.fraction) for k, (tol, rel) in self.tolerances.items()}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (self.steps and self.steps[-1] == trainer.global_step):
            return
        missing = [k for k in self.tolerances if k not in trainer.callback_metrics]
        if missing:
            raise KeyError(f"StopOnPlateau: no metric {', '.join(missing)} after validation; logged: "
                           f"{', '.join(sorted(trainer.callback_metrics)) or 'none'}")
        for k in self.tolerances:
            self.history[k].append(float(trainer.callback_metrics[k]))
        self.steps.append(trainer.global_step)
        if trainer.global_step >= self.min_steps and all(self.flat().values()):
            self.stopped_at_step = trainer.global_step
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"history": self.history, "steps": self.steps, "stopped_at_step": self.stopped_at_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {k: list(state_dict["history"].get(k, [])) for k in self.tolerances}
        self.steps = list(state_dict["steps"])
        self.stopped_at_step = state_dict["stopped_at_step"]
