"""α sweep: rows, files and the α=0 row equal to scoring unconditional samples of the same seed."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import write_checkpoint

from jointdiff.data.base import ImageDataModule, ImageTensorDataset, Splits
from jointdiff.metrics.frechet import FrechetDistance
from jointdiff.models.checkpoints import load_model
from jointdiff.models.extractors import load_classifier_features
from jointdiff.sampling.alpha_sweep import alpha_sweep
from jointdiff.sampling.generate import generate
from jointdiff.sampling.loading import judge_logits_fn
from jointdiff.tasks import hits


class TinyData(ImageDataModule):
    name, image_size, channels, num_classes = "tiny", 8, 1, 3

    def load_splits(self) -> Splits:
        g = torch.Generator().manual_seed(0)
        ds = ImageTensorDataset(torch.randint(0, 256, (30, 1, 8, 8), generator=g, dtype=torch.uint8),
                                torch.arange(30) % 3)
        return Splits(ds, ds, ds)


def test_alpha_sweep_rows_files_and_alpha_zero_baseline(tmp_path):
    ckpt = str(tmp_path / "tiny.ckpt")
    write_checkpoint(ckpt)
    out = tmp_path / "sweep"
    rows = alpha_sweep(ckpt, output=str(out), alphas=[0.0, 20.0], num_per_class=6, classes=[0, 2], judge=ckpt,
                       features=f"classifier:{ckpt}", data=TinyData(), batch_size=4, progress=False,
                       steps="all")  # the full chain, whose α = 0 row is the ddpm sampler's (below)
    assert [r["alpha"] for r in rows] == [0.0, 20.0]
    for suffix in ("csv", "md", "json", "png"):
        assert (out / f"alpha_sweep.{suffix}").is_file()
    assert (out / "grids" / "alpha_20.png").is_file()
    saved = np.load(out / "grids" / "alpha_20.npz")
    assert saved["arr_0"].shape == (12, 8, 8, 1) and saved["arr_1"].tolist() == [0] * 6 + [2] * 6
    with open(out / "alpha_sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert float(table[1]["fid"]) == pytest.approx(rows[1]["fid"])
    meta = json.loads((out / "alpha_sweep.json").read_text())
    assert meta["num_real"] == 30 and meta["features"]["type"] == "classifier"

    # α=0: the ddpm sampler's chains for the same per-sample seeds (12 samples, class-major), scored independently
    model = load_model(ckpt)
    x = generate(model, "ddpm", 12, seed=0, batch_size=5)
    y = torch.tensor([0] * 6 + [2] * 6)
    expected = hits(judge_logits_fn(ckpt)(x), y, "multiclass").float().mean()
    assert rows[0]["judge_hit_rate"] == pytest.approx(float(expected))
    extractor = load_classifier_features(ckpt)
    data = TinyData()
    data.setup("test")
    real = torch.stack([data.test_set[i][0] for i in range(30)])
    fid = FrechetDistance(extractor.dim)
    fid.update(extractor(real), real=True)
    fid.update(extractor(x), real=False)
    assert rows[0]["fid"] == pytest.approx(float(fid.compute()), rel=1e-6)
    assert 0.0 <= rows[0]["precision"] <= 1.0 and 0.0 <= rows[0]["recall"] <= 1.0


def test_alpha_sweep_rejects_bad_arguments(tmp_path):
    ckpt = str(tmp_path / "tiny.ckpt")
    write_checkpoint(ckpt)
    with pytest.raises(ValueError, match="alpha must be finite and >= 0"):
        alpha_sweep(ckpt, output=str(tmp_path), alphas=[10.0, -1.0], num_per_class=1)
    with pytest.raises(ValueError, match="unknown class 5"):
        alpha_sweep(ckpt, output=str(tmp_path), alphas=[1.0], classes=[5], num_per_class=1)
    with pytest.raises(ValueError, match="need both --features and --data"):
        alpha_sweep(ckpt, output=str(tmp_path), alphas=[1.0], features=f"classifier:{ckpt}", num_per_class=1)
