"""A pre-trained diffusion model read inside another model's constructor: the frozen-DDPM probe and PDAE build on
one (docs/design.md §9, §13.1)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

from jointdiff.models.base import build_unet
from jointdiff.models.checkpoints import load_model
from jointdiff.models.joint import JointDiffusion
from jointdiff.nn.unet import UNet


@contextmanager
def own_hyperparameters() -> Iterator[None]:
    """Let a LightningModule built in here record its own init arguments.

    While LightningCLI instantiates a model it publishes that model's config in a context variable, and *every*
    ``save_hyperparameters()`` call in the meantime takes it — so a DPM rebuilt inside the probe's or PDAE's
    ``__init__`` would record the probe's arguments instead of its own (no ``diffusion_steps``). Lightning has no
    public switch for this; we clear its (private) variable for the duration.
    """
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


def load_pretrained_dpm(path: str, image_size: int, channels: int) -> JointDiffusion:
    """The ``JointDiffusion`` saved at ``path``, in eval mode; rejects one trained on other image shapes."""
    with own_hyperparameters():
        dpm = load_model(path, expected=JointDiffusion)
    got = (dpm.hparams.image_size, dpm.hparams.channels)
    if got != (image_size, channels):
        raise ValueError(
            f"{path} was trained on {got[0]}×{got[0]}×{got[1]} images, but this data has "
            f"{image_size}×{image_size}×{channels}: pre-train a DDPM on this dataset (or pick its checkpoint)"
        )
    return dpm


def frozen_encoder(dpm: JointDiffusion, weights: Literal["ema", "raw"]) -> UNet:
    """A decoder-less copy of the DPM's UNet (time embedding, encoder, middle) with its ``weights``, frozen."""
    unet = build_unet(dpm.hparams, decoder=False)
    source = (dpm.ema.module if weights == "ema" else dpm.network).unet.state_dict()
    unet.load_state_dict({k: source[k] for k in unet.state_dict()})
    return unet.requires_grad_(False).eval()
