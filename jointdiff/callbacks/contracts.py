"""What the evaluation callbacks read of a model and of a DataModule, stated as ``Protocol`` s.

A callback checks its module against these in ``setup`` (one clear error before any step) and then reads the
attributes directly, instead of guessing with ``getattr`` defaults. :class:`jointdiff.models.JointDiffusion` is the
project's :class:`GenerativeModel`; every :class:`jointdiff.data.base.ImageDataModule` is an :class:`ImageData`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset


@runtime_checkable
class GenerativeModel(Protocol):
    """A model that draws unconditional samples in [-1, 1]."""

    sampler_name: str  # what ``sample`` runs, for the provenance record
    diffusion: object  # its ``num_steps``: the network evaluations one sample takes
    device: torch.device

    def sample(self, num: int, generator: torch.Generator | None = None, use_ema: bool = True,
               progress: bool = True) -> torch.Tensor:  # (num, c, H, W)
        ...


@runtime_checkable
class ImageData(Protocol):
    """A DataModule of images at one size, with its splits once set up."""

    name: str  # keys the reference-feature cache
    image_size: int
    channels: int
    batch_size: int  # the training (micro)batch; the reference input convention drops the last incomplete one
    train_set: Dataset | None
    val_set: Dataset | None
    test_set: Dataset | None

    def setup(self, stage: str) -> None: ...


def missing_members(obj: object, protocol: type) -> list[str]:
    """The attributes and methods of ``protocol`` that ``obj`` lacks (for the error message)."""
    names = set(protocol.__annotations__) | {n for n, v in vars(protocol).items() if callable(v) and n[0] != "_"}
    return sorted(n for n in names if not hasattr(obj, n))
