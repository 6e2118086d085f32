"""Writers of small datasets in each dataset's real on-disk format, for tests and smoke runs without the data.

Each writer produces the files exactly as the dataset distributes them (idx ``.gz``, libsvm ``.bz2``, MATLAB
``.mat``, python pickles, JPEG/PNG folders and zips with the published text files), from arrays the caller
chooses, so a test can compare what the loaders return with what was written. The writers share no code with the
parsers. Random contents come from a NumPy generator seeded by ``seed``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()


def _balanced_labels(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % k)


# idx (MNIST, Fashion-MNIST) -------------------------------------------------------------------------------------
def write_idx(folder: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """The four ``*-idx?-ubyte.gz`` files (big-endian header: magic 2051/2049, counts, 28, 28)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = _balanced_labels(n, 10, rng).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())
        out[f"{prefix}_images"], out[f"{prefix}_labels"] = images, labels
    return out


def write_idx_torchvision_layout(root: Path, name: str = "FashionMNIST", **kwargs) -> Path:
    """The four idx files uncompressed in ``<root>/<name>/raw/``, what torchvision's ``download=True`` leaves behind
    (``kwargs``: as :func:`write_idx`); returns the ``raw`` folder."""
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_idx(raw, **kwargs)
    for f in raw.glob("*.gz"):
        (raw / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
        f.unlink()
    return raw


# USPS ------------------------------------------------------------------------------------------------------------
def write_usps(folder: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """``usps.bz2`` / ``usps.t.bz2``: lines ``<label 1..10> 1:<v> … 256:<v>`` with v in [-1, 1]."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, key, n in (("usps.bz2", "train", n_train), ("usps.t.bz2", "test", n_test)):
        values = rng.uniform(-1, 1, (n, 256)).round(6)
        labels = _balanced_labels(n, 10, rng)
        lines = [
            f"{y + 1} " + " ".join(f"{j + 1}:{v:.6f}" for j, v in enumerate(row))
            for y, row in zip(labels, values, strict=True)
        ]
        with bz2.open(folder / name, "wt") as f:
            f.write("\n".join(lines) + "\n")
        out[f"{key}_values"], out[f"{key}_labels"] = values, labels
    return out


# SVHN ------------------------------------------------------------------------------------------------------------
def write_svhn(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """``train_32x32.mat`` / ``test_32x32.mat`` with ``X`` uint8 (32, 32, 3, N) and ``y`` (N, 1) in 1..10."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (_balanced_labels(n, 10, rng) + 1).astype(np.uint8).reshape(n, 1)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        out[f"{split}_X"], out[f"{split}_y"] = x, y
    return out


# CIFAR -----------------------------------------------------------------------------------------------------------
def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 10, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """``cifar-10-batches-py/`` with ``data_batch_1..5``, ``test_batch`` and ``batches.meta`` (rows of 3072 bytes:
    1024 red, 1024 green, 1024 blue, each row-major 32×32)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = _balanced_labels(per_batch, 10, rng).tolist()
        _pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "labels": y, "data": x,
                                            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)]})
        train_x.append(x)
        train_y += y
    x = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    y = _balanced_labels(n_test, 10, rng).tolist()
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": y, "data": x,
                                   "filenames": [f"test_{j}.png" for j in range(n_test)]})
    _pickle(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                      "horse", "ship", "truck"], "num_cases_per_batch": per_batch})
    return {"train_data": np.concatenate(train_x), "train_labels": np.array(train_y), "test_data": x,
            "test_labels": np.array(y)}


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """``cifar-100-python/`` with ``train``, ``test`` (``fine_labels`` 0..99, ``coarse_labels`` 0..19) and ``meta``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = _balanced_labels(n, 100, rng)
        _pickle(folder / split, {"filenames": [f"{split}_{j}.png" for j in range(n)], "batch_label": split,
                                 "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(), "data": x})
        out[f"{split}_data"], out[f"{split}_labels"] = x, fine
    _pickle(folder / "meta", {"fine_label_names": [f"class_{i}" for i in range(100)],
                              "coarse_label_names": [f"super_{i}" for i in range(20)]})
    return out


# CelebA ----------------------------------------------------------------------------------------------------------
def write_celeba(folder: Path, partitions: tuple[int, int, int] = (6, 3, 3), seed: int = 0) -> dict:
    """``img_align_celeba/000001.jpg…`` (178×218 JPEGs), ``list_attr_celeba.txt`` and ``list_eval_partition.txt``.

    Each image is one flat colour with a 16 px white band at the top and bottom (removed by the 64 px centre
    crop), so loaded pixels can be checked against the colour despite JPEG compression.
    """
    rng = np.random.default_rng(seed)
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    n = sum(partitions)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    colours = rng.integers(30, 220, (n, 3))
    attrs = rng.choice([-1, 1], (n, len(CELEBA_ATTRIBUTES)))
    for name, colour in zip(names, colours, strict=True):
        pixels = np.empty((218, 178, 3), dtype=np.uint8)
        pixels[:] = colour
        pixels[:16] = pixels[-16:] = 255
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name, quality=95)
    rows = [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, attrs, strict=True)]
    header = f"{n}\n" + " ".join(CELEBA_ATTRIBUTES) + " \n"
    (folder / "list_attr_celeba.txt").write_text(header + "\n".join(rows) + "\n")
    part = np.repeat([0, 1, 2], partitions)
    lines = [f"{a} {p}" for a, p in zip(names, part, strict=True)]
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return {"names": names, "colours": colours, "attributes": attrs, "partition": part}


# MALARIA ---------------------------------------------------------------------------------------------------------
def malaria_images(per_class: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """{"Parasitized/<name>.png": (h, w, 3) uint8, …}: flat-coloured cells of varying, non-square sizes."""
    rng = np.random.default_rng(seed)
    out = {}
    for cls in ("Parasitized", "Uninfected"):
        for i in range(per_class):
            h, w = rng.integers(40, 90, 2)
            pixels = np.empty((h, w, 3), dtype=np.uint8)
            pixels[:] = rng.integers(0, 256, 3)
            out[f"{cls}/C{i}P{i}ThinF_IMG_cell_{i}.png"] = pixels
    return out


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_malaria_folder(root: Path, images: dict[str, np.ndarray]) -> None:
    """``root/cell_images/<class>/<file>.png``, plus a ``Thumbs.db`` in each class folder as in the NIH release."""
    for name, pixels in images.items():
        path = root / "cell_images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(pixels))
        (path.parent / "Thumbs.db").write_bytes(b"\0" * 16)


def write_malaria_zip(path: Path, images: dict[str, np.ndarray]) -> None:
    """A zip with the members ``cell_images/<class>/<file>.png`` (and the ``Thumbs.db`` files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, pixels in images.items():
            z.writestr(f"cell_images/{name}", _png(pixels))
        for cls in ("Parasitized", "Uninfected"):
            z.writestr(f"cell_images/{cls}/Thumbs.db", b"\0" * 16)
