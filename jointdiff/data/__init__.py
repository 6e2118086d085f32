"""LightningDataModules of the dataset zoo (configs use ``class_path: jointdiff.data.<Name>``)."""

from jointdiff.data.base import DatasetNotFoundError, ImageDataModule, ImageTensorDataset
from jointdiff.data.celeba import CelebADataModule
from jointdiff.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from jointdiff.data.domain_adaptation import DomainAdaptationDataModule, domain_adaptation_pair
from jointdiff.data.fashion_mnist import FashionMNISTDataModule
from jointdiff.data.idx import IdxDataModule
from jointdiff.data.malaria import MalariaDataModule
from jointdiff.data.mnist import MNISTDataModule
from jointdiff.data.semisupervised import UNLABELLED, labelled_mask
from jointdiff.data.svhn import SVHNDataModule
from jointdiff.data.usps import USPSDataModule

__all__ = [
    "UNLABELLED",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CelebADataModule",
    "DatasetNotFoundError",
    "DomainAdaptationDataModule",
    "FashionMNISTDataModule",
    "IdxDataModule",
    "ImageDataModule",
    "ImageTensorDataset",
    "MNISTDataModule",
    "MalariaDataModule",
    "SVHNDataModule",
    "USPSDataModule",
    "domain_adaptation_pair",
    "labelled_mask",
]
