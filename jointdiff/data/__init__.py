"""LightningDataModules of the dataset zoo."""

from jointdiff.data.base import DatasetNotFoundError, ImageDataModule
from jointdiff.data.fashion_mnist import FashionMNISTDataModule

__all__ = ["DatasetNotFoundError", "FashionMNISTDataModule", "ImageDataModule"]
