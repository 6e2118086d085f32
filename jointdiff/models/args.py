"""Checks of the arguments every trainable model shares, raised from ``__init__`` so that a bad value is reported
before any data is read (the CLI prints the message as one line)."""

from __future__ import annotations


def check_optimizer_args(lr: float, weight_decay: float = 0.0) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
