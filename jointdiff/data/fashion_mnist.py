"""Fashion-MNIST (the idx-format machinery it shares with MNIST lives in :mod:`jointdiff.data.idx`)."""

from __future__ import annotations

import torchvision

from jointdiff.data.idx import IdxDataModule

__all__ = ["FashionMNISTDataModule"]


class FashionMNISTDataModule(IdxDataModule):
    """Fashion-MNIST: 60k train / 10k test, 28×28 gray, 10 classes."""

    name = "Fashion-MNIST"
    tv_class = torchvision.datasets.FashionMNIST
    env_subdir = "fashion-mnist"
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
