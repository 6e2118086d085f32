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


# MALARIA's two preprocessings, on real cell images ---------------------------------------------------------------
def _center_crop_arr(pil_image, image_size):
    """guided-diffusion's ``image_datasets.center_crop_arr``, transcribed (the reference's MALARIA resize)."""
    import numpy as np
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


@pytest.fixture(scope="module")
def malaria_cells(data_env, tmp_path_factory):
    """A zip of 12 real cells per class taken from the real archive: {name: PNG bytes}, and its folder."""
    import zipfile
    from pathlib import Path

    source = Path(os.environ["JOINTDIFF_DATA_ROOT"]) / "malaria" / "cell_images_32px.zip"
    root = tmp_path_factory.mktemp("malaria-real")
    cells = {}
    with zipfile.ZipFile(source) as z:
        for cls in ("Parasitized", "Uninfected"):
            names = sorted(n for n in z.namelist() if n.startswith(f"cell_images/{cls}/") and n.endswith(".png"))
            cells.update({n[len("cell_images/"):]: z.read(n) for n in names[:12]})
    with zipfile.ZipFile(root / "cell_images.zip", "w") as z:
        for name, data in cells.items():
            z.writestr(f"cell_images/{name}", data)
    return cells, root


def _stored_by_name(dm) -> dict:
    record = json.loads(dm.split_path.read_text())
    return {name: dm.train_set.images[k] for k, name in enumerate(record["train"])}


@pytest.mark.parametrize("size", [64, 16])  # 32 px sources: BICUBIC up; BOX halving, then BICUBIC down
def test_malaria_reference_preprocessing_is_center_crop_arr(malaria_cells, size):
    import io

    import numpy as np
    from PIL import Image

    cells, root = malaria_cells
    dm = _setup(MalariaDataModule(root=str(root), image_size=size, test_fraction=0.25, val_fraction=0.0,
                                  preprocessing="reference", download=False))
    stored = _stored_by_name(dm)
    assert len(stored) == 18
    for name, image in stored.items():
        expected = _center_crop_arr(Image.open(io.BytesIO(cells[name])).convert("RGB"), size)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected, err_msg=name)


def test_malaria_standard_preprocessing_is_torchvision_resize(malaria_cells):
    import io

    import numpy as np
    import torchvision.transforms as T
    from PIL import Image

    cells, root = malaria_cells
    dm = _setup(MalariaDataModule(root=str(root), image_size=48, test_fraction=0.25, val_fraction=0.0,
                                  preprocessing="standard", download=False))
    for name, image in _stored_by_name(dm).items():
        ref = np.asarray(T.CenterCrop(48)(T.Resize(48)(Image.open(io.BytesIO(cells[name])).convert("RGB"))))
        assert np.abs(image.permute(1, 2, 0).numpy().astype(np.int64) - ref).max() <= 1, name
    x, _ = dm.test_set.__getitems__(list(range(len(dm.test_set))))
    assert torch.equal(x, dm.test_set.__getitems__(list(range(len(dm.test_set))))[0])  # no flips


def test_malaria_reference_flips_every_split_at_every_load_reproducibly(malaria_cells):
    _, root = malaria_cells
    dm = _setup(MalariaDataModule(root=str(root), image_size=32, test_fraction=0.25, val_fraction=0.2,
                                  preprocessing="reference", download=False))
    for split in (dm.train_set, dm.val_set, dm.test_set):
        stored = split.to_float(split.images)
        index = list(range(len(split)))
        torch.manual_seed(0)
        loads = [split.__getitems__(index)[0] for _ in range(200)]
        flipped = torch.stack([(x == stored.flip(-1)).flatten(1).all(1) & (x != stored).flatten(1).any(1)
                               for x in loads])
        kept = torch.stack([(x == stored).flatten(1).all(1) for x in loads])
        assert bool((flipped | kept).all())  # every load is the image or its mirror image
        assert abs(flipped.float().mean().item() - 0.5) < 0.05  # each with probability ½, per image and load
        torch.manual_seed(0)
        assert torch.equal(split.__getitems__(index)[0], loads[0])  # seeded
        single = torch.stack([split[i][0] for i in index])
        assert bool(((single == stored) | (single == stored.flip(-1))).flatten(1).all(1).all())
