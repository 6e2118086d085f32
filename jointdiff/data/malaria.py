"""NIH malaria cell images (Rajaraman et al. 2018): ``cell_images/{Parasitized,Uninfected}/*.png``.

Read from the folder or straight from a zip holding that layout (the NIH ``cell_images.zip``, or the 32 px copy
``cell_images_32px.zip`` of the offline data). Two classes by folder: Uninfected = 0, Parasitized = 1 (the
reference labels a path containing "Parasitized" as 1). Non-PNG files (the release has ``Thumbs.db``) are ignored;
any other class folder is an error.

Decision D19: the reference trains and tests on the same images. Here a stratified, seeded split into
train / val / test is computed from the sorted file list and written to a JSON split file (see
:class:`MalariaDataModule`); the three parts are checked to be disjoint.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torchvision.datasets.utils import download_url

from jointdiff.data.base import ImageDataModule, ImageTensorDataset, Splits, cache_dir
from jointdiff.data.images import ImageFiles, Resampling, cached_decode, source_fingerprint
from jointdiff.files import atomic_write_json

CLASSES = ("Uninfected", "Parasitized")  # label = index
NIH_URL = "https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip"
_MEMBER = re.compile(r"^cell_images/([^/]+)/([^/]+)$")


@dataclass
class MalariaFiles:
    """The images found: ``names`` are ``<class>/<file>.png`` (sorted), read from ``folder/<name>`` (the
    ``cell_images`` folder) or from ``zip_path`` member ``cell_images/<name>``."""

    names: list[str]
    labels: torch.Tensor  # (N,) long
    folder: Path | None = None
    zip_path: Path | None = None

    def image_files(self, size: int, resampling: Resampling = "torchvision") -> ImageFiles:
        if self.zip_path is not None:
            return ImageFiles([f"cell_images/{n}" for n in self.names], size, zip_path=self.zip_path,
                              resampling=resampling)
        return ImageFiles(self.names, size, folder=self.folder, resampling=resampling)


def _collect(entries: list[tuple[str, str]], where: str) -> tuple[list[str], torch.Tensor]:
    """(class folder, file name) pairs → sorted names and labels; rejects any class folder but the two."""
    classes = {c for c, _ in entries}
    if classes != set(CLASSES):
        raise ValueError(
            f"{where}: expected exactly the class folders {', '.join(CLASSES)} holding .png images, "
            f"found {', '.join(sorted(classes)) or 'none'}"
        )
    names = sorted(f"{c}/{f}" for c, f in entries)
    labels = torch.tensor([CLASSES.index(n.split("/", 1)[0]) for n in names], dtype=torch.long)
    return names, labels


def scan_folder(root: Path) -> MalariaFiles | None:
    folder = root / "cell_images"
    if not folder.is_dir():
        return None
    entries = [(p.parent.name, p.name) for p in folder.glob("*/*.png")]
    return MalariaFiles(*_collect(entries, str(folder)), folder=folder)


def scan_zip(path: Path) -> MalariaFiles | None:
    try:
        with zipfile.ZipFile(path) as z:
            members = z.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"could not read the zip archive {path}: {err}") from err
    entries = [m.groups() for name in members if (m := _MEMBER.match(name)) and name.lower().endswith(".png")]
    if not entries:
        return None
    return MalariaFiles(*_collect(entries, f"{path}:cell_images/"), zip_path=path)


def find_malaria(root: Path) -> MalariaFiles | None:
    """The ``cell_images/`` folder under ``root``, else ``cell_images.zip``, else any other zip with that layout."""
    found = scan_folder(root)
    if found is not None or not root.is_dir():
        return found
    zips = sorted(root.glob("*.zip"), key=lambda p: (p.name != "cell_images.zip", p.name))
    for path in zips:
        found = scan_zip(path)
        if found is not None:
            return found
    return None


def stratified_split(
    labels: torch.Tensor, test_fraction: float, val_fraction: float, seed: int
) -> dict[str, torch.Tensor]:
    """Per class, a seeded permutation: ``round(test_fraction·n_c)`` to test, then ``round(val_fraction·rest)`` to
    val, the remainder to train. Returns index tensors {"train", "val", "test"}: train sorted, val and test in a
    seeded shuffled order. The file list is sorted by class, so a sorted evaluation split would be class-sorted and
    any partial evaluation (``limit_val_batches``, the first N test images) would see a single class and report
    the fraction predicted as that class as "accuracy"."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for c in range(int(labels.max()) + 1):
        members = (labels == c).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=g)]
        n_test = round(test_fraction * len(members))
        n_val = round(val_fraction * (len(members) - n_test))
        out["test"].append(members[:n_test])
        out["val"].append(members[n_test : n_test + n_val])
        out["train"].append(members[n_test + n_val :])
    split = {k: torch.cat(v) for k, v in out.items()}
    split["train"] = split["train"].sort().values
    for k in ("val", "test"):
        split[k] = split[k][torch.randperm(len(split[k]), generator=g)]
    return split


class MalariaDataModule(ImageDataModule):
    """MALARIA: 27,558 cell images (13,779 per class), 2 classes, served at ``image_size`` × 3 (default 64, the
    paper's; any source size is resized: shorter side to ``image_size``, then the centre square).

    ``preprocessing`` (docs/fidelity.md, item 5):
    - ``reference`` (default, the paper's): as the authors' code loads it through guided-diffusion's
      ``ImageDataset``: PIL decoding, ``center_crop_arr`` (BOX halving while the image is at least twice the
      target, BICUBIC resize of the shorter side, centre crop) and a horizontal flip with probability ½ at *every*
      fetch, in every split (training, evaluation and FID's real images alike); the flips are seeded by the run's
      seed, the reference's are not.
    - ``standard``: torchvision decoding, antialiased bilinear resize of the shorter side, centre crop, no flips
      (what this module did before 2026-12-02; evaluation sees every image as it is).

    Split (D19): stratified by class and seeded by ``split_seed``: ``test_fraction`` of each class is the test set,
    ``val_fraction`` of the rest is held out for validation. The split is written to ``split_file`` if given
    (an existing file there is read and used as is, in its order), else to
    ``<cache>/splits/malaria-<data hash>-seed<S>-test<T>-val<V>.json``; its path is printed and kept in
    ``split_path``. Re-running with the same data and arguments reproduces the same file.
    """

    name = "MALARIA"
    env_subdir = "malaria"
    channels = 3
    num_classes = 2

    def __init__(
        self,
        image_size: int = 64,
        test_fraction: float = 0.1,
        split_file: str | None = None,
        preprocessing: Literal["reference", "standard"] = "reference",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if preprocessing not in ("reference", "standard"):
            raise ValueError(f"MALARIA preprocessing must be reference|standard, got {preprocessing!r}")
        self.preprocessing = preprocessing
        if image_size < 8:
            raise ValueError(f"MALARIA image_size must be >= 8, got {image_size}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.image_size = image_size
        self.test_fraction = test_fraction
        self.split_file = split_file
        self.split_path: Path | None = None

    @staticmethod
    def _download(target: Path) -> None:
        download_url(NIH_URL, str(target), "cell_images.zip")

    def _default_split_path(self, names: list[str]) -> Path:
        data_hash = hashlib.sha1("\n".join(names).encode()).hexdigest()[:12]
        return cache_dir() / "splits" / (
            f"malaria-{data_hash}-seed{self.split_seed}-test{self.test_fraction:g}-val{self.val_fraction:g}.json"
        )

    def _split(self, files: MalariaFiles) -> dict[str, torch.Tensor]:
        """Index tensors into ``files.names``, from the split file when it exists, else computed and written."""
        path = Path(self.split_file) if self.split_file else self._default_split_path(files.names)
        computed = stratified_split(files.labels, self.test_fraction, self.val_fraction, self.split_seed)
        position = {n: i for i, n in enumerate(files.names)}
        if path.exists():
            record = json.loads(path.read_text())
            try:
                # the file's order is the served order (train: any; val, test: the order evaluated in)
                split = {k: torch.tensor([position[n] for n in record[k]], dtype=torch.long) for k in computed}
            except KeyError as err:
                raise ValueError(f"split file {path} names an image or split not in the data: {err}") from err
            if not self.split_file and any(not torch.equal(split[k], computed[k]) for k in computed):
                raise ValueError(f"split file {path} differs from the split recomputed from the data; delete it")
        else:
            split = computed
            counts = {k: torch.bincount(files.labels[v], minlength=2).tolist() for k, v in split.items()}
            atomic_write_json(
                {
                    "dataset": self.name, "classes": list(CLASSES), "split_seed": self.split_seed,
                    "test_fraction": self.test_fraction, "val_fraction": self.val_fraction,
                    "counts_per_class": counts, **{k: [files.names[i] for i in v] for k, v in split.items()},
                },
                path,
            )
        sets = [set(v.tolist()) for v in split.values()]
        duplicates = any(len(v) != len(s) for v, s in zip(split.values(), sets, strict=True))
        if duplicates or sum(map(len, sets)) != len(set().union(*sets)):
            raise ValueError(f"split file {path}: train, val and test must be disjoint and free of duplicates")
        self.split_path = path
        rank_zero_info(
            f"MALARIA split ({path}): "
            + ", ".join(f"{k} {len(v)}" for k, v in split.items())
            + f" (seed {self.split_seed})"
        )
        return split

    def load_splits(self) -> Splits:
        files = self.resolve(
            find_malaria,
            "cell_images/{Parasitized,Uninfected}/*.png (as a folder, or inside cell_images.zip or another .zip)",
            self._download,
            f"download cell_images.zip from {NIH_URL} (--data.download true does this, needs internet) into "
            f"{cache_dir() / 'download'}",
        )
        source = files.zip_path if files.zip_path is not None else files.folder
        images = cached_decode(
            cache_dir() / "decoded" / "malaria",
            {"source": source_fingerprint([source])},
            files.image_files(self.image_size, "reference" if self.preprocessing == "reference" else "torchvision"),
            self.num_workers,
            desc=f"MALARIA: decoding to {self.image_size}px (once; cached)",
        )
        split = self._split(files)
        full = ImageTensorDataset(images, files.labels, random_flip=self.preprocessing == "reference")
        val = full.subset(split["val"]) if self.val_fraction > 0 else None  # empty: rejected by check_split
        return Splits(full.subset(split["train"]), val, full.subset(split["test"]))
