"""Every DataModule reads small fixture files written in its dataset's real on-disk format (idx .gz, libsvm .bz2,
SVHN .mat, CIFAR pickles, CelebA folder + text files, MALARIA folder and zip) through the code users run; loaded
pixels and labels are compared with what was written, resizing with the reference's PIL transforms."""

from __future__ import annotations

import json

import fixtures as fx  # tests/ is on sys.path (rootdir conftest, no package)
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from jointdiff.data import (
    CelebADataModule,
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MalariaDataModule,
    MNISTDataModule,
    SVHNDataModule,
    USPSDataModule,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINTDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("JOINTDIFF_DATA_ROOT", raising=False)


def _uint8(ds) -> np.ndarray:
    """Back from the served [-1, 1] floats to the uint8 pixels (exact: x = u/127.5 − 1)."""
    x, _ = ds.__getitems__(list(range(len(ds))))
    return np.rint((x.numpy() + 1) * 127.5).astype(np.int64)


def _pil_resize(a: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR)).astype(np.int64)


# idx --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [MNISTDataModule, FashionMNISTDataModule])
def test_idx_gz_pixels_labels_and_test_split(tmp_path, cls):
    written = fx.write_idx(tmp_path / "d", n_train=50, n_test=20)
    dm = cls(root=str(tmp_path / "d"), val_fraction=0.2, download=False)
    dm.setup()
    assert (dm.image_size, dm.channels, dm.num_classes, dm.task) == (28, 1, 10, "multiclass")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, 20)
    np.testing.assert_array_equal(_uint8(dm.test_set)[:, 0], written["t10k_images"])
    np.testing.assert_array_equal(dm.test_set.targets.numpy(), written["t10k_labels"])
    # train + val together are exactly the written training images, each once
    both = np.concatenate([_uint8(dm.train_set), _uint8(dm.val_set)])[:, 0].reshape(50, -1)
    assert sorted(map(bytes, both.astype(np.uint8))) == sorted(map(bytes, written["train_images"].reshape(50, -1)))


def test_mnist32_rgb_resize_matches_reference_pil_transform(tmp_path):
    written = fx.write_idx(tmp_path / "d", n_train=20, n_test=10)
    dm = MNISTDataModule(root=str(tmp_path / "d"), image_size=32, channels=3, upscale="resize", val_fraction=0.0)
    dm.setup()
    got = _uint8(dm.test_set)
    assert got.shape == (10, 3, 32, 32)
    # the reference's MNIST32: transforms.Grayscale(3) + transforms.Resize(32) on PIL images
    ref = np.stack([np.asarray(T.Resize(32)(T.Grayscale(3)(Image.fromarray(a)))) for a in written["t10k_images"]])
    assert np.abs(got.transpose(0, 2, 3, 1) - ref.astype(np.int64)).max() <= 1


def test_mnist_pad_to_32_adds_background_border(tmp_path):
    written = fx.write_idx(tmp_path / "d", n_train=20, n_test=10)
    dm = MNISTDataModule(root=str(tmp_path / "d"), image_size=32, val_fraction=0.0)
    dm.setup()
    np.testing.assert_array_equal(_uint8(dm.test_set)[:, 0], np.pad(written["t10k_images"], ((0, 0), (2, 2), (2, 2))))


# USPS -------------------------------------------------------------------------------------------------------------
def test_usps_libsvm_bz2_native_and_resized(tmp_path):
    written = fx.write_usps(tmp_path / "u", n_train=30, n_test=20)
    native = USPSDataModule(root=str(tmp_path / "u"), image_size=16, val_fraction=0.0)
    native.setup()
    expected = ((written["test_values"] + 1) / 2 * 255).astype(np.uint8).reshape(20, 16, 16)  # the file's scaling
    np.testing.assert_array_equal(_uint8(native.test_set)[:, 0], expected)
    np.testing.assert_array_equal(native.test_set.targets.numpy(), written["test_labels"])  # 1..10 → 0..9
    dm = USPSDataModule(root=str(tmp_path / "u"), val_fraction=0.0)  # default 28 px (reference's Resize(28))
    dm.setup()
    got = _uint8(dm.test_set)[:, 0]
    assert got.shape == (20, 28, 28) and len(dm.train_set) == 30
    assert np.abs(got - np.stack([_pil_resize(a, 28) for a in expected])).max() <= 1


# SVHN -------------------------------------------------------------------------------------------------------------
def test_svhn_mat_layout_and_label_ten_is_zero(tmp_path):
    written = fx.write_svhn(tmp_path / "s", n_train=30, n_test=20)
    dm = SVHNDataModule(root=str(tmp_path / "s"), val_fraction=0.0)
    dm.setup()
    got = _uint8(dm.test_set)
    assert got.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(got, written["test_X"].transpose(3, 2, 0, 1))  # image n, channel c at [h, w, c, n]
    y = written["test_y"][:, 0].astype(np.int64)
    np.testing.assert_array_equal(dm.test_set.targets.numpy(), np.where(y == 10, 0, y))
    assert (written["test_y"] == 10).any() and len(dm.train_set) == 30


# CIFAR ------------------------------------------------------------------------------------------------------------
def test_cifar10_pickles_channel_planes(tmp_path):
    written = fx.write_cifar10(tmp_path, per_batch=8, n_test=12)
    dm = CIFAR10DataModule(root=str(tmp_path), val_fraction=0.0)  # finds cifar-10-batches-py/ under the root
    dm.setup()
    got = _uint8(dm.test_set)
    data = written["test_data"]
    i, c, h, w = 5, 2, 7, 19
    assert got[i, c, h, w] == data[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(got.reshape(12, -1), data)
    np.testing.assert_array_equal(dm.test_set.targets.numpy(), written["test_labels"])
    np.testing.assert_array_equal(_uint8(dm.train_set).reshape(40, -1), written["train_data"])  # batches 1..5 in order


def test_cifar100_fine_labels(tmp_path):
    written = fx.write_cifar100(tmp_path, n_train=200, n_test=100)
    dm = CIFAR100DataModule(root=str(tmp_path / "cifar-100-python"), val_fraction=0.0)
    dm.setup()
    assert dm.num_classes == 100
    np.testing.assert_array_equal(dm.train_set.targets.numpy(), written["train_labels"])
    np.testing.assert_array_equal(_uint8(dm.test_set).reshape(100, -1), written["test_data"])


# CelebA -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def celeba_root(tmp_path):
    root = tmp_path / "celeba_root"
    return root, fx.write_celeba(root / "celeba", partitions=(6, 3, 3))  # torchvision's celeba/ layout


def test_celeba_official_partitions_all_40_attributes(celeba_root):
    root, written = celeba_root
    dm = CelebADataModule(root=str(root))
    dm.setup()
    assert (dm.image_size, dm.channels, dm.num_classes, dm.task) == (64, 3, 40, "multilabel")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (6, 3, 3)
    np.testing.assert_array_equal(dm.test_set.targets.numpy(), (written["attributes"][9:] + 1) // 2)
    got = _uint8(dm.val_set)
    assert got.shape == (3, 3, 64, 64)
    # the white bands lie outside the centre crop; the rest is the flat colour (up to JPEG error)
    assert np.abs(got.transpose(0, 2, 3, 1) - written["colours"][6:9, None, None, :]).max() <= 6


def test_celeba_resize_crop_matches_reference_transform(tmp_path):
    folder = tmp_path / "c"
    fx.write_celeba(folder, partitions=(2, 1, 1))
    dm = CelebADataModule(root=str(folder), image_size=32)
    dm.setup()
    pil = Image.open(folder / "img_align_celeba" / "000004.jpg").convert("RGB")
    ref = np.asarray(T.CenterCrop(32)(T.Resize(32)(pil))).astype(np.int64)  # the reference's CelebA transform
    assert np.abs(_uint8(dm.test_set)[0].transpose(1, 2, 0) - ref).max() <= 1


def test_celeba_attribute_subset_and_single_binary_attribute(celeba_root):
    root, written = celeba_root
    names = fx.CELEBA_ATTRIBUTES
    subset = CelebADataModule(root=str(root), attributes=["Smiling", "Young"])
    assert (subset.num_classes, subset.task) == (2, "multilabel")
    subset.setup()
    cols = [names.index("Smiling"), names.index("Young")]
    np.testing.assert_array_equal(subset.train_set.targets.numpy(), (written["attributes"][:6, cols] + 1) // 2)
    single = CelebADataModule(root=str(root), attributes="Male")
    assert (single.num_classes, single.task) == (2, "multiclass")
    single.setup()
    assert single.train_set.targets.ndim == 1
    male = (written["attributes"][:6, names.index("Male")] + 1) // 2
    np.testing.assert_array_equal(single.train_set.targets.numpy(), male)


def test_celeba_decoded_cache_is_reused_and_invalidated(celeba_root, tmp_path):
    root, _ = celeba_root
    cache = tmp_path / "cache" / "decoded" / "celeba"
    first = CelebADataModule(root=str(root))
    first.setup()
    files = {p: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    assert len(files) == 3  # one array per partition
    again = CelebADataModule(root=str(root))
    again.setup()
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == files  # read back, not decoded again
    assert torch.equal(first.train_set.images, again.train_set.images)
    CelebADataModule(root=str(root), image_size=32).setup()  # other preprocessing: its own entries
    assert len(list(cache.glob("*.npy"))) == 6
    (root / "celeba" / "img_align_celeba" / "000001.jpg").unlink()  # the image folder changed: decoded anew
    with pytest.raises(ValueError, match="000001.jpg"):
        CelebADataModule(root=str(root)).setup()


# MALARIA ----------------------------------------------------------------------------------------------------------
def test_malaria_folder_and_zip_give_the_same_data(tmp_path):
    images = fx.malaria_images(per_class=10)
    fx.write_malaria_folder(tmp_path / "f", images)
    fx.write_malaria_zip(tmp_path / "z" / "cell_images.zip", images)
    dms = []
    for root in ("f", "z"):
        dm = MalariaDataModule(root=str(tmp_path / root), image_size=24, test_fraction=0.2, val_fraction=0.25)
        dm.setup()
        dms.append(dm)
    a, b = dms
    assert (a.image_size, a.channels, a.num_classes) == (24, 3, 2)
    for split in ("train_set", "val_set", "test_set"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images)
        assert torch.equal(getattr(a, split).targets, getattr(b, split).targets)
    # stratified: per class 10 → 2 test, then 2 of the remaining 8 to val, 6 to train
    for split, n in (("train_set", 6), ("val_set", 2), ("test_set", 2)):
        assert torch.bincount(getattr(a, split).targets, minlength=2).tolist() == [n, n]
    # flat-coloured cells: the resized image keeps the colour; labels follow the folder (Parasitized = 1)
    record = json.loads(a.split_path.read_text())
    for k, name in enumerate(record["test"]):
        assert a.test_set.targets[k].item() == int(name.startswith("Parasitized/"))
        flat = np.broadcast_to(images[name][0, 0], (24, 24, 3))
        np.testing.assert_array_equal(_uint8(a.test_set)[k].transpose(1, 2, 0), flat)


def test_malaria_standard_resize_is_torchvision_resize_and_center_crop(tmp_path):
    rng = np.random.default_rng(1)
    images = {f"{c}/cell_{i}.png": rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
              for c in ("Parasitized", "Uninfected") for i in range(3)}
    fx.write_malaria_zip(tmp_path / "cells.zip", images)  # any zip name with the NIH layout
    dm = MalariaDataModule(root=str(tmp_path), image_size=32, test_fraction=0.34, val_fraction=0.0,
                           preprocessing="standard")
    dm.setup()
    name = json.loads(dm.split_path.read_text())["test"][0]
    ref = np.asarray(T.CenterCrop(32)(T.Resize(32)(Image.fromarray(images[name])))).astype(np.int64)
    assert np.abs(_uint8(dm.test_set)[0].transpose(1, 2, 0) - ref).max() <= 1


def test_malaria_split_file_reproducible_and_keyed(tmp_path):
    fx.write_malaria_folder(tmp_path / "f", fx.malaria_images(per_class=10))
    kw = dict(root=str(tmp_path / "f"), image_size=16, test_fraction=0.2)
    a, b, c = MalariaDataModule(**kw), MalariaDataModule(**kw), MalariaDataModule(split_seed=1, **kw)
    for dm in (a, b, c):
        dm.setup()
    assert a.split_path == b.split_path != c.split_path
    ra, rc = json.loads(a.split_path.read_text()), json.loads(c.split_path.read_text())
    assert ra["test"] != rc["test"]
    assert set(ra["train"]).isdisjoint(ra["test"]) and set(ra["val"]).isdisjoint(ra["test"] + ra["train"])
    assert len(ra["train"]) + len(ra["val"]) + len(ra["test"]) == 20
    assert torch.equal(a.test_set.images, b.test_set.images)
    # an explicit split file is written where asked, and then read back as the split
    own = tmp_path / "run" / "split.json"
    d = MalariaDataModule(split_file=str(own), **kw)
    d.setup()
    assert json.loads(own.read_text())["test"] == ra["test"]
    record = json.loads(own.read_text())
    record["test"], record["train"] = record["train"][:4], record["train"][4:] + record["test"]
    own.write_text(json.dumps(record))
    e = MalariaDataModule(split_file=str(own), **kw)
    e.setup()
    expected = (len(ra["train"]) - 4 + len(ra["test"]), len(ra["val"]), 4)
    assert (len(e.train_set), len(e.val_set), len(e.test_set)) == expected
