"""The DataModules on the real data in ``$JOINTDIFF_DATA_ROOT`` (Fashion-MNIST, MNIST, USPS, MALARIA): sizes, class
counts, value range, split disjointness. Each dataset is loaded once per module. CI sets the variable; without it
these tests fail with a message saying so (they are not skipped)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
import torchvision

from jointdiff.data import FashionMNISTDataModule, MalariaDataModule, MNISTDataModule, USPSDataModule
from jointdiff.data.base import split_indices

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
USPS_TRAIN_COUNTS = [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
USPS_TEST_COUNTS = [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]


@pytest.fixture(scope="module")
def data_env(tmp_path_factory):
    if not os.environ.get("JOINTDIFF_DATA_ROOT"):
        pytest.fail("JOINTDIFF_DATA_ROOT is not set: these tests read the real datasets (CI sets it to ../shared/data)")
    # module fixtures run before conftest's per-test cache fixture: point at the same per-session cache
    os.environ.setdefault("JOINTDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "jointdiff-cache"))


def _setup(dm):
    dm.setup()
    return dm


def _counts(targets: torch.Tensor, k: int) -> list[int]:
    return torch.bincount(targets, minlength=k).tolist()


def _check_range(dm) -> None:
    x, _ = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape[1:] == (dm.channels, dm.image_size, dm.image_size)
    images = dm.train_set.images
    assert images.dtype == torch.uint8 and int(images.min()) == 0 and int(images.max()) == 255
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0 and float(x.min()) == -1.0


@pytest.fixture(scope="module")
def fashion(data_env):
    return _setup(FashionMNISTDataModule(batch_size=256, download=False))


@pytest.fixture(scope="module")
def mnist(data_env):
    return _setup(MNISTDataModule(batch_size=256, download=False))


@pytest.fixture(scope="module")
def usps(data_env):
    return _setup(USPSDataModule(batch_size=256, download=False))


@pytest.fixture(scope="module")
def malaria(data_env):
    return _setup(MalariaDataModule(image_size=32, batch_size=256, download=False))  # the real copy is 32 px


def test_fashion_mnist_sizes_counts_range_and_disjoint_val(fashion):
    assert (len(fashion.train_set), len(fashion.val_set), len(fashion.test_set)) == (54000, 6000, 10000)
    all_train = torch.cat([fashion.train_set.targets, fashion.val_set.targets])
    assert _counts(all_train, 10) == [6000] * 10 and _counts(fashion.test_set.targets, 10) == [1000] * 10
    _check_range(fashion)
    # the held-out part is exactly the rows split_indices holds out of torchvision's own parse of the files
    tv = torchvision.datasets.FashionMNIST(str(fashion._locate()), train=True)
    keep, held = split_indices(60000, 0.1, 0)
    assert set(keep.tolist()).isdisjoint(held.tolist()) and len(keep) + len(held) == 60000
    assert torch.equal(fashion.val_set.images[:, 0], tv.data[held])
    assert torch.equal(fashion.train_set.images[:, 0], tv.data[keep])


def test_mnist_matches_published_checksums_and_counts(mnist):
    assert (len(mnist.train_set), len(mnist.val_set), len(mnist.test_set)) == (54000, 6000, 10000)
    assert _counts(torch.cat([mnist.train_set.targets, mnist.val_set.targets]), 10) == MNIST_TRAIN_COUNTS
    assert _counts(mnist.test_set.targets, 10) == MNIST_TEST_COUNTS
    folder = mnist._locate() / "MNIST" / "raw"  # the decompressed copy that torchvision parsed
    md5 = {f: hashlib.md5((folder / f).read_bytes()).hexdigest()
           for f in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")}
    assert md5 == {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
                   "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea"}  # published values
    _check_range(mnist)


def test_mnist32_rgb_target_of_svhn(data_env, mnist):
    dm = _setup(MNISTDataModule(image_size=32, channels=3, upscale="resize", download=False))
    assert dm.test_set.images.shape == (10000, 3, 32, 32)
    assert torch.equal(dm.test_set.images[:, 0], dm.test_set.images[:, 2])
    assert torch.equal(dm.test_set.targets, mnist.test_set.targets)


def test_usps_sizes_counts_and_range(usps):
    assert (len(usps.train_set) + len(usps.val_set), len(usps.test_set)) == (7291, 2007)
    assert _counts(torch.cat([usps.train_set.targets, usps.val_set.targets]), 10) == USPS_TRAIN_COUNTS
    assert _counts(usps.test_set.targets, 10) == USPS_TEST_COUNTS
    assert usps.test_set.images.shape == (2007, 1, 28, 28)
    x, _ = next(iter(usps.test_dataloader()))
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_malaria_sizes_stratified_disjoint_split(malaria):
    record = json.loads(malaria.split_path.read_text())
    parts = {k: set(record[k]) for k in ("train", "val", "test")}
    assert sum(map(len, parts.values())) == 27558
    assert parts["train"].isdisjoint(parts["test"]) and parts["val"].isdisjoint(parts["test"] | parts["train"])
    # per class 13,779: 1,378 test (10%), 1,240 val (10% of the rest), 11,161 train
    assert _counts(malaria.test_set.targets, 2) == [1378, 1378]
    assert _counts(malaria.val_set.targets, 2) == [1240, 1240]
    assert _counts(malaria.train_set.targets, 2) == [11161, 11161]
    assert record["counts_per_class"] == {"train": [11161, 11161], "val": [1240, 1240], "test": [1378, 1378]}
    assert all(n.startswith(("Parasitized/", "Uninfected/")) for n in parts["test"])
    # evaluation splits are served shuffled: a partial evaluation (limit_val_batches) must see both classes
    # (the file list is class-sorted; a sorted split gave "accuracy" = fraction predicted Parasitized)
    for part in (malaria.val_set, malaria.test_set):
        assert abs(part.targets[:250].float().mean().item() - 0.5) < 0.1
    assert [int(n.startswith("Parasitized/")) for n in record["test"][:250]] == malaria.test_set.targets[:250].tolist()
    _check_range(malaria)


def test_semi_supervised_one_percent_on_real_fashion_mnist(data_env, fashion):
    dm = _setup(FashionMNISTDataModule(labelled_fraction=0.01, labelled_seed=0, download=False))
    y = dm.train_set.targets
    labelled = (y != -1).nonzero().squeeze(1)
    assert len(labelled) == 540 and torch.equal(labelled, dm.labelled_indices)
    assert torch.equal(y[labelled], fashion.train_set.targets[labelled])  # the kept labels are the true ones
    assert torch.equal(dm.val_set.targets, fashion.val_set.targets)
    assert torch.equal(dm.test_set.targets, fashion.test_set.targets)
    assert torch.equal(dm.train_set.images, fashion.train_set.images)  # every image stays in for the diffusion loss
