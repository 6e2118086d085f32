"""Semi-supervised labels (docs/design.md §7, decision D17): which examples keep theirs, and the −1 convention.

Unlabelled examples carry the label ``UNLABELLED`` (−1), the reference's convention; for multi-label targets the
whole attribute row is −1. The diffusion loss uses every image; only the classifier needs labels.
"""

from __future__ import annotations

import torch

UNLABELLED = -1
# the two streams of a training batch in ``semi_supervised_mode=stream`` (see ``ImageDataModule``)
IMAGES_STREAM = "images"
LABELLED_STREAM = "labelled"


def split_train_batch(batch) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """``(images, labelled)`` of a training batch: ``labelled`` is the labelled stream's ``(x, y)`` in
    ``semi_supervised_mode=stream`` (the batch is then a dict) and ``None`` otherwise."""
    if isinstance(batch, dict):
        return batch[IMAGES_STREAM], batch[LABELLED_STREAM]
    return batch, None


def validate_labelled_args(fraction: float | None, per_class: int | None) -> None:
    """Reject a labelled share outside (0, 1], a non-positive count, or both given, before any data is read."""
    if fraction is not None and per_class is not None:
        raise ValueError("give either labelled_fraction or labelled_per_class, not both")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"labelled_per_class must be >= 1, got {per_class}")


def labelled_mask(y: torch.Tensor) -> torch.Tensor:
    """(B,) bool: which examples carry a label. ``y`` is (B,) class ids or (B, n) attributes."""
    return (y != UNLABELLED) if y.ndim == 1 else (y != UNLABELLED).all(dim=1)


def select_labelled(
    targets: torch.Tensor,
    num_classes: int,
    fraction: float | None,
    per_class: int | None,
    seed: int,
    class_balanced: bool = False,
) -> torch.Tensor:
    """Sorted indices of the examples that keep their labels.

    - ``fraction`` alone: a seeded uniform draw of ``⌊f·N⌋`` indices (the reference's rule, seeded).
    - ``fraction`` with ``class_balanced``: ``⌊f·N / K⌋`` from every class.
    - ``per_class``: exactly that many from every class (always balanced).

    Multi-label targets (N, n) only support the uniform fraction.
    """
    validate_labelled_args(fraction, per_class)
    n = len(targets)
    g = torch.Generator().manual_seed(seed)
    balanced = per_class is not None or class_balanced
    if not balanced:
        if fraction is None:
            return torch.arange(n)
        k = int(fraction * n)
        if k < 1:
            raise ValueError(f"labelled_fraction={fraction} of {n} training images keeps no label")
        return torch.randperm(n, generator=g)[:k].sort().values
    if targets.ndim != 1:
        raise ValueError("labelled_per_class and class_balanced need single-label (multiclass) targets")
    k = per_class if per_class is not None else int(fraction * n / num_classes)
    if k < 1:
        raise ValueError(f"labelled_fraction={fraction} of {n} images gives no labelled example per class")
    chosen = []
    for c in range(num_classes):
        members = (targets == c).nonzero().squeeze(1)
        if len(members) < k:
            raise ValueError(f"class {c} has {len(members)} training images, fewer than the {k} labelled asked for")
        chosen.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(chosen).sort().values


def hide_labels(targets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A copy of ``targets`` with every example not in ``keep`` set to ``UNLABELLED``."""
    hidden = torch.full_like(targets, UNLABELLED)
    hidden[keep] = targets[keep]
    return hidden
