"""MNIST (idx files), also as the 32 px 3-channel target of SVHN→MNIST domain adaptation."""

from __future__ import annotations

import torchvision

from jointdiff.data.idx import IdxDataModule


class MNISTDataModule(IdxDataModule):
    """MNIST: 60k train / 10k test, 28×28 gray, 10 classes. ``image_size=32, channels=3, upscale="resize"`` is
    the reference's ``MNIST32`` (the SVHN→MNIST target, docs/design.md §1/§8)."""

    name = "MNIST"
    tv_class = torchvision.datasets.MNIST
    env_subdir = "mnist"
