"""Bad inputs get clear errors: missing files (naming what is expected and how to get it), corrupt files, labels or
shapes that do not match, impossible semi-supervised settings, and a DataModule that does not fit the model.
Also the root resolution order: explicit root, then ``$JOINTDIFF_DATA_ROOT/<name>``."""

from __future__ import annotations

import gzip
import pickle
import zipfile

import fixtures as fx  # tests/ is on sys.path (rootdir conftest, no package)
import lightning as L
import numpy as np
import pytest

from jointdiff.data import (
    CelebADataModule,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DatasetNotFoundError,
    DomainAdaptationDataModule,
    FashionMNISTDataModule,
    MalariaDataModule,
    MNISTDataModule,
    SVHNDataModule,
    USPSDataModule,
)
from jointdiff.models import JointDiffusion


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINTDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("JOINTDIFF_DATA_ROOT", raising=False)


MISSING = [
    (MNISTDataModule, ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"], "mnist"),
    (FashionMNISTDataModule, ["train-images-idx3-ubyte.gz"], "fashion-mnist"),
    (USPSDataModule, ["usps.bz2", "usps.t.bz2"], "usps"),
    (SVHNDataModule, ["train_32x32.mat", "test_32x32.mat"], "svhn"),
    (CIFAR10DataModule, ["data_batch_1", "test_batch", "cifar-10-python.tar.gz"], "cifar-10"),
    (CIFAR100DataModule, ["cifar-100-python", "train", "test"], "cifar-100"),
    (CelebADataModule, ["img_align_celeba/", "list_attr_celeba.txt", "list_eval_partition.txt"], "celeba"),
    (MalariaDataModule, ["cell_images/{Parasitized,Uninfected}/*.png", "cell_images.zip"], "malaria"),
]


@pytest.mark.parametrize(("cls", "expected", "subdir"), MISSING, ids=[m[0].__name__ for m in MISSING])
def test_missing_files_name_expected_files_and_remedies(tmp_path, cls, expected, subdir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        cls(root=str(empty)).setup()
    msg = str(info.value)
    for name in expected:
        assert name in msg
    assert str(empty) in msg and "JOINTDIFF_DATA_ROOT" in msg and f"<that>/{subdir}/" in msg and "download" in msg


def test_missing_message_keeps_the_foundation_wording(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        FashionMNISTDataModule(root=str(tmp_path)).setup()
    lines = str(info.value).splitlines()
    assert lines[0].startswith("Fashion-MNIST not found. Expected the four idx files (train-images-idx3-ubyte.gz")
    assert lines[1] == f"Looked in: {tmp_path}"
    assert lines[2] == "Provide them in one of three ways:"
    assert "torchvision's FashionMNIST/raw layout" in lines[3]


def test_env_root_is_used_and_explicit_root_wins(tmp_path, monkeypatch):
    fx.write_usps(tmp_path / "datasets" / "usps", n_train=20, n_test=10)
    monkeypatch.setenv("JOINTDIFF_DATA_ROOT", str(tmp_path / "datasets"))
    dm = USPSDataModule(val_fraction=0.0, download=False)
    dm.setup()
    assert len(dm.train_set) == 20
    with pytest.raises(DatasetNotFoundError, match="usps.bz2"):  # an explicit root is the only place looked at
        USPSDataModule(root=str(tmp_path / "elsewhere")).setup()
    monkeypatch.setenv("JOINTDIFF_DATA_ROOT", str(tmp_path / "nothing_here"))
    with pytest.raises(DatasetNotFoundError) as info:
        USPSDataModule(download=False).setup()
    assert str(tmp_path / "nothing_here" / "usps") in str(info.value)


# corrupt files ----------------------------------------------------------------------------------------------------
def test_truncated_idx_gz(tmp_path):
    fx.write_idx(tmp_path, n_train=20, n_test=10)
    raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:200])  # cut mid-stream
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        MNISTDataModule(root=str(tmp_path)).setup()


def test_idx_with_wrong_size_header(tmp_path):
    fx.write_idx(tmp_path, n_train=20, n_test=10)
    raw = bytearray(gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[7] = 11  # announces 11 images, holds 10
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: its header announces shape \(11, 28, 28\)"):
        MNISTDataModule(root=str(tmp_path)).setup()


def test_corrupt_usps_line(tmp_path):
    import bz2

    fx.write_usps(tmp_path, n_train=20, n_test=10)
    lines = bz2.decompress((tmp_path / "usps.t.bz2").read_bytes()).decode().splitlines()
    lines[3] = lines[3].rsplit(" ", 5)[0]  # a row with 251 values
    (tmp_path / "usps.t.bz2").write_bytes(bz2.compress("\n".join(lines).encode()))
    with pytest.raises(ValueError, match=r"usps\.t\.bz2"):
        USPSDataModule(root=str(tmp_path)).setup()


def test_corrupt_svhn_mat(tmp_path):
    fx.write_svhn(tmp_path, n_train=20, n_test=10)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated" + b"\0" * 40)
    with pytest.raises(ValueError, match="test_32x32.mat"):
        SVHNDataModule(root=str(tmp_path)).setup()


def test_corrupt_cifar_pickle(tmp_path):
    fx.write_cifar10(tmp_path, per_batch=4, n_test=4)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="data_batch_3"):
        CIFAR10DataModule(root=str(tmp_path)).setup()


def test_cifar_label_out_of_range_is_rejected(tmp_path):
    fx.write_cifar10(tmp_path, per_batch=4, n_test=4)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(path.read_bytes())
    entry["labels"][0] = 12
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(ValueError, match=r"labels span 0\.\.12.*num_classes=10"):
        CIFAR10DataModule(root=str(tmp_path), val_fraction=0.0).setup()


def test_corrupt_celeba_files(tmp_path):
    fx.write_celeba(tmp_path, partitions=(2, 1, 1))
    attr = tmp_path / "list_attr_celeba.txt"
    good = attr.read_text()
    attr.write_text(good.replace(" 1", " 7", 1))
    with pytest.raises(ValueError, match="must be -1 or 1"):
        CelebADataModule(root=str(tmp_path)).setup()
    lines = good.splitlines()
    attr.write_text("\n".join(lines[:3] + [" ".join(lines[3].split()[:-3])] + lines[4:]))
    with pytest.raises(ValueError, match="line 4 has 37 values for 40 attributes"):
        CelebADataModule(root=str(tmp_path)).setup()
    attr.write_text(good)
    (tmp_path / "img_align_celeba" / "000002.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ValueError, match="could not decode image .*000002.jpg"):
        CelebADataModule(root=str(tmp_path)).setup()
    with pytest.raises(ValueError, match="unknown CelebA attribute.*Wings"):
        CelebADataModule(root=str(tmp_path), attributes=["Smiling", "Wings"]).setup()


def test_corrupt_malaria_png_and_zip(tmp_path):
    images = fx.malaria_images(per_class=3)
    fx.write_malaria_zip(tmp_path / "a" / "cell_images.zip", images)
    name = sorted(images)[1]
    with zipfile.ZipFile(tmp_path / "a" / "cell_images.zip", "a") as z:
        z.writestr(f"cell_images/{name[:-4]}_broken.png", b"\x89PNG garbage")
    with pytest.raises(ValueError, match="could not decode image .*_broken.png"):
        MalariaDataModule(root=str(tmp_path / "a"), image_size=16).setup()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cell_images.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="could not read the zip archive"):
        MalariaDataModule(root=str(tmp_path / "b"), image_size=16).setup()


def test_malaria_extra_class_folder_is_rejected(tmp_path):
    images = fx.malaria_images(per_class=3)
    images["Unknown/cell_x.png"] = images[sorted(images)[0]]
    fx.write_malaria_folder(tmp_path, images)
    with pytest.raises(ValueError, match="expected exactly the class folders Uninfected, Parasitized.*Unknown"):
        MalariaDataModule(root=str(tmp_path), image_size=16).setup()


# arguments ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_labelled_fraction_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match=r"labelled_fraction must be in \(0, 1\]"):
        FashionMNISTDataModule(labelled_fraction=fraction)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="either labelled_fraction or labelled_per_class"):
        MNISTDataModule(labelled_fraction=0.1, labelled_per_class=5)
    with pytest.raises(ValueError, match="class_balanced .* needs labelled_fraction"):
        MNISTDataModule(class_balanced=True)
    with pytest.raises(ValueError, match="labelled_per_class must be >= 1"):
        MNISTDataModule(labelled_per_class=0)
    with pytest.raises(ValueError, match="val_fraction"):
        USPSDataModule(val_fraction=1.0)
    with pytest.raises(ValueError, match="image_size must be 28"):
        MNISTDataModule(image_size=30)
    with pytest.raises(ValueError, match="test_fraction"):
        MalariaDataModule(test_fraction=0.0)
    with pytest.raises(ValueError, match="unsupported pair mnist→svhn"):
        DomainAdaptationDataModule(source="mnist", target="svhn")
    with pytest.raises(ValueError, match="center_crop"):
        CelebADataModule(image_size=64, center_crop=32)


def test_labelled_fraction_too_small_for_the_data(tmp_path):
    fx.write_idx(tmp_path, n_train=50, n_test=10)
    with pytest.raises(ValueError, match="keeps no label"):
        MNISTDataModule(root=str(tmp_path), labelled_fraction=0.01, val_fraction=0.0).setup()
    with pytest.raises(ValueError, match="fewer than the 9 labelled"):
        MNISTDataModule(root=str(tmp_path), labelled_per_class=9, val_fraction=0.0).setup()


def _tiny_model(**kw) -> JointDiffusion:
    return JointDiffusion(model_channels=16, norm_groups=8, num_res_blocks=1, attention_downsample=[],
                          diffusion_steps=10, classifier_augmentation="off", **kw)


def test_class_count_that_does_not_match_the_model(tmp_path):
    fx.write_idx(tmp_path, n_train=20, n_test=10)
    dm = MNISTDataModule(root=str(tmp_path), batch_size=4)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(ValueError, match=r"model.num_classes=5 does not match data.num_classes=10"):
        trainer.fit(_tiny_model(num_classes=5), dm)
    with pytest.raises(ValueError, match=r"model.image_size=32 does not match data.image_size=28"):
        trainer.fit(_tiny_model(image_size=32), dm)


def test_gray_malaria_pngs_are_read_as_rgb(tmp_path):
    images = {k: np.full((40, 30), 77, dtype=np.uint8) for k in fx.malaria_images(per_class=3)}  # gray PNGs
    fx.write_malaria_folder(tmp_path, images)
    dm = MalariaDataModule(root=str(tmp_path), image_size=16, test_fraction=0.34, val_fraction=0.0)
    dm.setup()
    assert dm.train_set.images.shape[1:] == (3, 16, 16) and bool((dm.train_set.images == 77).all())


def test_split_that_does_not_match_declared_shape_or_classes_is_rejected(tmp_path):
    import torch

    from jointdiff.data import ImageTensorDataset

    dm = MNISTDataModule()
    with pytest.raises(ValueError, match=r"images are \(1, 32, 32\), expected \(1, 28, 28\)"):
        dm.check_split(ImageTensorDataset(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), torch.zeros(2)), "train")
    with pytest.raises(ValueError, match="labels span 0..10"):
        dm.check_split(ImageTensorDataset(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 10])), "test")
    with pytest.raises(ValueError, match="labels span -1..3"):  # −1 only allowed in the training split
        dm.check_split(ImageTensorDataset(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.tensor([-1, 3])), "val")
