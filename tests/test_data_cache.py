"""Decoded-data caches never serve stale or broken data: entries are keyed on the source files'
identity, rebuilt when a source changes, never written for a file that fails to parse, and every error names the
source file, not the cache."""

from __future__ import annotations

import os
import shutil

import fixtures as fx  # tests/ is on sys.path (rootdir conftest, no package)
import numpy as np
import pytest
import torch

from jointdiff.data import FashionMNISTDataModule, MalariaDataModule


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINTDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("JOINTDIFF_DATA_ROOT", raising=False)


def _load(root) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(root=str(root), val_fraction=0.0)
    dm.setup()
    return dm


def test_empty_gz_is_reported_by_its_source_name_and_not_cached(tmp_path):
    good = tmp_path / "good"
    fx.write_idx(good, n_train=20, n_test=10)
    data = tmp_path / "data"
    shutil.copytree(good, data)
    (data / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        _load(data)
    assert str(data / "train-images-idx3-ubyte.gz") in str(err.value) and "cache" not in str(err.value)
    # restoring the good file is enough: nothing of the failed attempt is served
    shutil.copy2(good / "train-images-idx3-ubyte.gz", data / "train-images-idx3-ubyte.gz")
    dm = _load(data)
    assert len(dm.train_set) == 20


def test_replaced_files_are_served_not_the_old_cache(tmp_path):
    data = tmp_path / "data"
    first = fx.write_idx(data, n_train=20, n_test=10, seed=0)
    dm = _load(data)
    assert torch.equal(dm.test_set.images[:, 0], torch.from_numpy(first["t10k_images"]))
    # other files copied over the same root (e.g. MNIST over Fashion-MNIST); keep the old mtimes' granularity
    # from hiding the change by also changing the sizes' content
    second = fx.write_idx(tmp_path / "other", n_train=30, n_test=10, seed=1)
    for f in (tmp_path / "other").iterdir():
        shutil.copyfile(f, data / f.name)
    dm = _load(data)
    assert len(dm.train_set) == 30
    assert torch.equal(dm.test_set.images[:, 0], torch.from_numpy(second["t10k_images"]))
    # only the entry of the current files is kept
    entries = [p for p in (tmp_path / "cache" / "idx").rglob("*") if p.parent.parent == tmp_path / "cache" / "idx"]
    assert len(entries) == 1


def test_same_size_replacement_with_new_mtime_is_detected(tmp_path):
    data = tmp_path / "data"
    fx.write_idx(data, n_train=20, n_test=10, seed=0)
    _load(data)
    new = fx.write_idx(tmp_path / "other", n_train=20, n_test=10, seed=5)  # same sizes, other pixels
    for f in (tmp_path / "other").iterdir():
        shutil.copyfile(f, data / f.name)
        st = os.stat(data / f.name)
        os.utime(data / f.name, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    dm = _load(data)
    assert torch.equal(dm.test_set.images[:, 0], torch.from_numpy(new["t10k_images"]))


def test_malaria_folder_file_replaced_in_place_is_decoded_again(tmp_path):
    images = fx.malaria_images(per_class=4)
    fx.write_malaria_folder(tmp_path, images)
    dm = MalariaDataModule(root=str(tmp_path), image_size=16, preprocessing="standard", val_fraction=0.25,
                           test_fraction=0.25)
    dm.setup()
    before = torch.cat([dm.train_set.images, dm.val_set.images, dm.test_set.images]).clone()
    name = sorted(images)[0]
    inverted = {name: (255 - images[name]).astype(np.uint8)}
    path = tmp_path / "cell_images" / name
    st = path.stat()
    fx.write_malaria_folder(tmp_path, inverted)  # the folder's own mtime does not change
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    dm = MalariaDataModule(root=str(tmp_path), image_size=16, preprocessing="standard", val_fraction=0.25,
                           test_fraction=0.25)
    dm.setup()
    after = torch.cat([dm.train_set.images, dm.val_set.images, dm.test_set.images])
    assert not torch.equal(before, after)


def test_prepare_data_parses_once_and_fills_the_cache_other_processes_read(tmp_path, monkeypatch):
    data = tmp_path / "data"
    fx.write_idx(data, n_train=20, n_test=10)
    calls = []
    original = FashionMNISTDataModule.load_splits

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(FashionMNISTDataModule, "load_splits", counting)
    dm = FashionMNISTDataModule(root=str(data), val_fraction=0.0)
    dm.prepare_data()  # Lightning: once per node, before any setup
    assert len(calls) == 1 and any((tmp_path / "cache" / "idx").rglob("train-images-idx3-ubyte"))  # cache filled
    dm.setup("fit")
    assert len(calls) == 1 and len(dm.train_set) == 20
    entry = next((tmp_path / "cache" / "idx").iterdir())
    built = {p: p.stat().st_mtime_ns for p in entry.rglob("*")}
    other = FashionMNISTDataModule(root=str(data), val_fraction=0.0)  # another process of the job
    other.setup("fit")
    assert {p: p.stat().st_mtime_ns for p in entry.rglob("*")} == built  # read from the cache, not rebuilt
