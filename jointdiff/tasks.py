"""The classification task, the one home for it: ``multiclass`` (one class id per example) or ``multilabel`` (a 0/1
vector of attributes, CelebA), with what depends on it: target checks, the loss and the per-sample hit.

This module imports nothing from the package: every layer may use it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Task = Literal["multiclass", "multilabel"]


def check_task(task: str) -> str:
    if task not in ("multiclass", "multilabel"):
        raise ValueError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
    return task


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, task: str,
                        reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """CE (multiclass) or BCE-with-logits over batch × attributes (multilabel, docs/design.md §4.3).

    ``mean``: the training loss. ``sum``: ``Σ_b CE(logits_b, y_b)``, what the steered samplers differentiate, so
    that each sample's gradient is its own (docs/design.md §5.1); ``−sum`` is ``Σ_b log p(y_b | x_b)``, the
    guidance objective."""
    if check_task(task) == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction=reduction)
    return F.cross_entropy(logits, targets, reduction=reduction)


def hits(logits: torch.Tensor, requested: torch.Tensor, task: str) -> torch.Tensor:
    """Per-sample hit: argmax = requested class (multiclass, (B,) bool) or per-attribute agreement of
    ``logit > 0`` with the requested 0/1 vector (multilabel, (B, n) bool). Its mean is the hit rate."""
    if check_task(task) == "multiclass":
        if requested.ndim != 1 or logits.ndim != 2 or len(requested) != len(logits):
            raise ValueError(f"multiclass hit rate needs logits (B, n) and requested (B,), got "
                             f"{tuple(logits.shape)} and {tuple(requested.shape)}")
        return logits.argmax(dim=1) == requested
    if requested.shape != logits.shape:
        raise ValueError(f"multilabel hit rate needs requested of the logits' shape {tuple(logits.shape)}, "
                         f"got {tuple(requested.shape)}")
    return (logits > 0) == requested.bool()


def check_targets(targets: torch.Tensor, num_outputs: int, task: str, batch: int | None = None) -> torch.Tensor:
    """Reject targets that do not fit a classifier with ``num_outputs`` logits; returns them in the loss's dtype.

    multiclass: (B,) integer class ids in ``0…num_outputs−1``. multilabel: (B, num_outputs) 0/1 attribute vectors.
    """
    if check_task(task) == "multiclass":
        if targets.ndim != 1 or targets.dtype.is_floating_point:
            raise ValueError(f"multiclass targets must be a (B,) tensor of class ids, got {tuple(targets.shape)} "
                             f"{targets.dtype}")
        bad = targets[(targets < 0) | (targets >= num_outputs)]
        if bad.numel():
            raise ValueError(f"unknown class {int(bad[0])}: the classifier has {num_outputs} classes "
                             f"(0..{num_outputs - 1})")
        out = targets.long()
    else:
        if targets.ndim != 2 or targets.shape[1] != num_outputs:
            raise ValueError(f"multilabel targets must be (B, {num_outputs}) 0/1 vectors, got {tuple(targets.shape)}")
        if not bool(((targets == 0) | (targets == 1)).all()):
            raise ValueError("multilabel targets must contain only 0 and 1")
        out = targets.float()
    if batch is not None and out.shape[0] != batch:
        raise ValueError(f"got {out.shape[0]} targets for a batch of {batch} samples")
    return out
