"""Targets of class-steered sampling: validation and the summed target loss both steered samplers differentiate."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Task = Literal["multiclass", "multilabel"]


def check_targets(targets: torch.Tensor, num_outputs: int, task: str, batch: int | None = None) -> torch.Tensor:
    """Reject targets that do not fit a classifier with ``num_outputs`` logits; returns them in the loss's dtype.

    multiclass: (B,) integer class ids in ``0…num_outputs−1``. multilabel: (B, num_outputs) 0/1 attribute vectors.
    """
    if task == "multiclass":
        if targets.ndim != 1 or targets.dtype.is_floating_point:
            raise ValueError(f"multiclass targets must be a (B,) tensor of class ids, got {tuple(targets.shape)} "
                             f"{targets.dtype}")
        bad = targets[(targets < 0) | (targets >= num_outputs)]
        if bad.numel():
            raise ValueError(f"unknown class {int(bad[0])}: the classifier has {num_outputs} classes "
                             f"(0..{num_outputs - 1})")
        out = targets.long()
    elif task == "multilabel":
        if targets.ndim != 2 or targets.shape[1] != num_outputs:
            raise ValueError(f"multilabel targets must be (B, {num_outputs}) 0/1 vectors, got {tuple(targets.shape)}")
        if not bool(((targets == 0) | (targets == 1)).all()):
            raise ValueError("multilabel targets must contain only 0 and 1")
        out = targets.float()
    else:
        raise ValueError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
    if batch is not None and out.shape[0] != batch:
        raise ValueError(f"got {out.shape[0]} targets for a batch of {batch} samples")
    return out


def target_loss(logits: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """``Σ_b CE(logits_b, y_b)`` (multiclass) or ``Σ_{b,a} BCE-with-logits`` (multilabel): summed, so each sample's
    gradient is its own (docs/design.md §5.1). ``−target_loss`` is ``Σ_b log p(y_b | x_b)``, the guidance objective."""
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="sum")
    return F.cross_entropy(logits, targets, reduction="sum")


def hit_rate(logits: torch.Tensor, targets: torch.Tensor, task: str) -> float:
    """Share of samples a classifier assigns to their target: argmax = y (multiclass); for multilabel the mean
    per-attribute agreement of the thresholded prediction (logit > 0) with the target vector."""
    if task == "multilabel":
        return ((logits > 0).to(targets.dtype) == targets).float().mean().item()
    return (logits.argmax(dim=1) == targets).float().mean().item()
