"""``jointdiff score``: a sample file scores exactly as the training-time evaluation scored the same samples, files
of other layouts are read, the class hit rate is the judge's, and bad files get one clear line."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from conftest import SyntheticDataModule, evaluation_callback, make_tiny_checkpoint

from jointdiff.cli import main as cli_main
from jointdiff.models.checkpoints import load_model
from jointdiff.models.extractors import load_classifier_features
from jointdiff.sampling.files import read_samples
from jointdiff.sampling.scoring import score_samples

pytestmark = pytest.mark.usefixtures("one_thread")
METRICS = ("fid", "precision_knn", "recall_knn", "precision_prd", "recall_prd")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The training-time evaluation of a tiny joint model (36 samples), with its samples saved."""
    root = tmp_path_factory.mktemp("evaluated")
    ckpt = make_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-joint" / "tiny.ckpt")
    callback = evaluation_callback(str(ckpt), str(root / "cache"), input_conventions=["standard"],
                                   save_samples=True)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(root), callbacks=[callback])
    trainer.test(load_model(ckpt), SyntheticDataModule(batch_size=8, eval_batch_size=8), verbose=False)
    return ckpt, root, callback.last_results, callback.last_record


def score(path, ckpt, root, **kwargs):
    return score_samples(str(path), SyntheticDataModule(batch_size=8, eval_batch_size=8),
                         features=[f"clf=classifier:{ckpt}"], batch_size=8, prd_clusters=5, prd_runs=1,
                         cache_dir=str(root / "cache"), progress=False, **kwargs)


def test_a_saved_evaluation_scores_as_the_evaluation_did(evaluated):
    ckpt, root, results, record = evaluated
    npz = record.samples_npz
    images, targets, info = read_samples(npz)
    assert images.shape == (36, 1, 16, 16) and targets is None and info["layout"] == "NHWC"
    scored = score(npz, ckpt, root)
    for m in METRICS:
        assert scored["results"][f"score/gen_clf/{m}_standard"] == pytest.approx(
            results[f"test/gen_clf/{m}_standard"], rel=1e-6, abs=1e-9), m
    # the real features came from the evaluation's cache, keyed identically
    assert scored["reference_source"] == {"clf/standard": "disk"}
    assert scored["num_reference"] == record.num_reference
    assert scored["extractors"] == record.extractors


def test_other_layouts_score_the_same(evaluated, tmp_path):
    ckpt, root, results, record = evaluated
    pixels = np.load(record.samples_npz)["arr_0"]  # (N, H, W, 1) uint8
    np.save(tmp_path / "nhwc.npy", pixels[..., 0])  # (N, H, W) gray uint8, another implementation's .npy
    nchw = tmp_path / "nchw.npz"
    np.savez(nchw, images=pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0, labels=np.arange(36) % 3)
    with pytest.raises(ValueError, match="could be in \\[0, 1\\] or \\[-1, 1\\]; pass --value_range"):
        score(nchw, ckpt, root)
    for path, kwargs in ((tmp_path / "nhwc.npy", {}), (nchw, {"value_range": "0,1"})):
        scored = score(path, ckpt, root, **kwargs)
        assert scored["results"]["score/gen_clf/fid_standard"] == pytest.approx(
            results["test/gen_clf/fid_standard"], rel=1e-6)
    assert read_samples(nchw, value_range="0,1")[2]["layout"] == "NCHW"


def test_a_file_of_jointdiff_sample_through_the_cli_with_a_judge(evaluated, tmp_path):
    ckpt, root, _, _ = evaluated
    cli_main(["sample", "--checkpoint", str(ckpt), "--sampler", "joint", "--alpha", "1", "--classes", "[0, 2]",
              "--num", "5", "--output", str(tmp_path / "s"), "--progress", "false", "--clip_denoised", "true"])
    npz = tmp_path / "s" / "samples.npz"
    cli_main(["score", str(npz), "--data", "test_ddp_evaluation.SyntheticDataModule", "--data.batch_size", "8",
              "--features", f"[clf=classifier:{ckpt}]", "--judge", str(ckpt), "--batch_size", "8",
              "--prd_clusters", "5", "--prd_runs", "1", "--cache_dir", str(root / "cache"), "--progress", "false"])
    record = json.loads((tmp_path / "s" / "samples.score.json").read_text())
    images, targets, _ = read_samples(npz)
    judge = load_classifier_features(str(ckpt))
    expected = float((judge.logits(images).argmax(1) == targets).float().mean())
    assert record["results"]["score/judge_hit_rate"] == pytest.approx(expected)
    assert record["num_generated"] == 10 and record["samples"]["targets_key"] == "arr_1"
    assert np.isfinite(record["results"]["score/gen_clf/fid_standard"])


def test_bad_files_get_one_clear_line(evaluated, tmp_path):
    ckpt, root, _, _ = evaluated
    with pytest.raises(FileNotFoundError, match="sample file not found"):
        read_samples(tmp_path / "missing.npz")
    np.savez(tmp_path / "keys.npz", other=np.zeros((2, 16, 16, 1), np.uint8))
    with pytest.raises(ValueError, match="expected the images under one of"):
        read_samples(tmp_path / "keys.npz")
    np.save(tmp_path / "ambiguous.npy", np.zeros((2, 3, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="pass --layout NHWC or --layout NCHW"):
        read_samples(tmp_path / "ambiguous.npy")
    np.save(tmp_path / "size.npy", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="holds \\(1, 8, 8\\) images"):
        score(tmp_path / "size.npy", ckpt, root)
    np.save(tmp_path / "no_targets.npy", np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="holds no targets"):
        score(tmp_path / "no_targets.npy", ckpt, root, judge=str(ckpt))
    torch.save({"images": torch.zeros(2, 1, 16, 16)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="could be in"):
        read_samples(tmp_path / "x.pt")
