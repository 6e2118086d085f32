"""Feature extractors, the reference-feature cache and the GenerativeEvaluation callback on one process."""

import json
import time

import lightning as L
import numpy as np
import pytest
import torch
from conftest import N_TEST, SyntheticDataModule, evaluation_callback, fid_scipy, knn_scipy, make_tiny_checkpoint

from jointdiff.callbacks.evaluation import batch_seed
from jointdiff.images import to_uint8
from jointdiff.metrics import ClassHitRate, InceptionWeightsNotFoundError
from jointdiff.metrics.extractors import INCEPTION_FILE, ClassifierFeatures, InceptionFeatures
from jointdiff.metrics.feature_sets import canonical
from jointdiff.metrics.prd import prd_precision_recall
from jointdiff.metrics.reference import ReferenceCache, ReferenceKey, assemble, global_batches, rank_batches
from jointdiff.models.checkpoints import CLASS_KEY, load_model
from jointdiff.models.extractors import build_extractor
from jointdiff.nn.heads import pooled_features

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-joint" / "tiny.ckpt")


# Inception weights: fail fast, name the file and the option -------------------------------------------------------
def test_missing_inception_weights_name_the_file_and_the_option(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / INCEPTION_FILE
    with pytest.raises(InceptionWeightsNotFoundError) as err:
        build_extractor("inception", inception_weights=str(missing))
    assert str(missing) in str(err.value) and "inception_weights" in str(err.value)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty torch hub cache
    start = time.perf_counter()
    with pytest.raises(InceptionWeightsNotFoundError) as err:
        build_extractor("inception", allow_download=False)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / INCEPTION_FILE) in message
    assert "inception_weights" in message and "classifier:" in message


def test_missing_weights_stop_the_run_at_setup_before_any_sampling(tiny_checkpoint, tmp_path):
    model = load_model(tiny_checkpoint)
    callback = evaluation_callback(str(tiny_checkpoint), str(tmp_path / "cache"),
                                   feature_extractors=["inception"], inception_weights=str(tmp_path / "w.pth"))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), callbacks=[callback])
    with pytest.raises(InceptionWeightsNotFoundError, match="inception_weights") as err:
        trainer.test(model, SyntheticDataModule(batch_size=8, eval_batch_size=8))
    assert any(entry.name == "setup" for entry in err.traceback)  # raised by the callback's setup hook
    assert callback.last_results is None and not (tmp_path / "samples").exists()


def test_models_and_datamodules_are_checked_against_the_contracts_before_any_step(tiny_checkpoint, tmp_path):
    from jointdiff.callbacks.contracts import GenerativeModel, ImageData
    from jointdiff.data import FashionMNISTDataModule

    model = load_model(tiny_checkpoint)
    assert isinstance(model, GenerativeModel)
    assert isinstance(SyntheticDataModule(batch_size=8), ImageData) and isinstance(FashionMNISTDataModule(), ImageData)
    callback = evaluation_callback(str(tiny_checkpoint), str(tmp_path / "cache"))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), callbacks=[callback])
    with pytest.raises(TypeError, match="LightningModule lacks diffusion, sample, sampler_name"):
        callback.setup(trainer, L.LightningModule(), "test")

    class Unnamed(L.LightningDataModule):  # a DataModule that says nothing about its images
        def test_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1, 16, 16)))

    with pytest.raises(TypeError, match="Unnamed lacks batch_size, channels, image_size, test_set, train_set, val_set"):
        trainer.test(model, Unnamed())
    assert callback.last_record is None


# Inception plumbing, with a random-weights file of the right format ------------------------------------------
@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # build the layers, keep random init
            return None

    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    torch.manual_seed(0)
    net = Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(folder / "empty.pth"))
    torch.save(net.state_dict(), folder / "random.pth")
    return folder / "random.pth"


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_inception_conventions(random_inception_weights):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    extractor = InceptionFeatures(str(random_inception_weights))
    uint8 = torch.randint(0, 256, (1, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images = uint8.float() / 127.5 - 1  # how the DataModules serve them
    # standard: torch-fidelity's own forward (the torchmetrics FID path) on the uint8 RGB image
    standard = extractor(images, "standard")
    assert standard.shape == (1, 2048) and standard.abs().sum() > 0
    # our layer list (used by the reference convention) reproduces that network from its normalised input
    rgb = uint8.expand(-1, 3, -1, -1).float()
    x = interpolate_bilinear_2d_like_tensorflow1x(rgb, size=(299, 299), align_corners=False)
    assert _rel_err(extractor.pool3((x - 128) / 128), standard) < 1e-5
    # reference (the authors' pytorch-fid port): float resize and 2x − 1 give other features
    assert _rel_err(extractor(images, "reference"), standard) > 1e-3


# Classifier extractor ----------------------------------------------------------------------------------------
def test_classifier_features_are_the_pooled_encoder_representation(tiny_checkpoint):
    extractor = build_extractor(f"clf=classifier:{tiny_checkpoint}")
    assert isinstance(extractor, ClassifierFeatures) and extractor.name == "clf" and extractor.dim == 112
    net = load_model(tiny_checkpoint).eval_network
    dm = SyntheticDataModule()
    dm.setup()
    x, _ = dm.test_set.__getitems__(list(range(8)))
    t0 = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        z = pooled_features(*net.unet.encode(x, t0))
        logits = net.classify(x, t0)
    torch.testing.assert_close(extractor(x, "reference"), z)
    torch.testing.assert_close(extractor(x, "standard"), z)  # real data are on the uint8 grid already
    torch.testing.assert_close(extractor.logits(x), logits)
    off_grid = x + 0.003  # generated samples are not: standard quantises them, reference does not
    with torch.no_grad():
        z_quantised = pooled_features(*net.unet.encode(to_uint8(off_grid, rounding="round").float() / 127.5 - 1, t0))
    torch.testing.assert_close(extractor(off_grid, "standard"), z_quantised)
    assert not torch.allclose(extractor(off_grid, "reference"), z_quantised)
    with pytest.raises(ValueError, match="1×16×16"):
        extractor(torch.zeros(2, 3, 16, 16))


def test_classifier_extractor_rejects_a_model_without_head(tiny_checkpoint, tmp_path):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    from jointdiff.models import JointDiffusion

    hp = dict(ckpt["hyper_parameters"], classifier_weight=0.0)
    no_head = {CLASS_KEY: ckpt[CLASS_KEY], "hyper_parameters": hp, "state_dict": JointDiffusion(**hp).state_dict()}
    torch.save(no_head, tmp_path / "ddpm.ckpt")
    with pytest.raises(ValueError, match="classifier head"):
        build_extractor(f"classifier:{tmp_path / 'ddpm.ckpt'}")
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_extractor("lenet")


def test_class_hit_rate_matches_the_classifier_argmax(tiny_checkpoint):
    extractor = build_extractor(f"classifier:{tiny_checkpoint}")
    g = torch.Generator().manual_seed(1)
    images, requested = torch.rand(30, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 3, (30,), generator=g)
    metric = ClassHitRate(extractor)
    metric.update(images[:13], requested[:13])
    metric.update(images[13:], requested[13:])
    out = metric.compute()
    hit = (extractor.logits(images).argmax(1) == requested).numpy()
    assert float(out["hit_rate"]) == pytest.approx(hit.mean(), abs=1e-12)
    for c in range(3):
        assert float(out["per_class"][c]) == pytest.approx(hit[requested.numpy() == c].mean(), abs=1e-12)


# Reference cache and batch bookkeeping ---------------------------------------------------------------------
def test_reference_cache_hits_only_the_same_key(tmp_path):
    cache = ReferenceCache(tmp_path)
    key = ReferenceKey("Fashion-MNIST", "test", "abc", "inception", "w1", "standard", 5, 0)
    features = torch.randn(5, 3)
    assert cache.load(key) is None
    cache.save(key, features)
    assert torch.equal(cache.load(key), features)
    for field, value in [("dataset", "MNIST"), ("split", "val"), ("data_fingerprint", "abd"), ("extractor", "clf"),
                         ("extractor_fingerprint", "w2"), ("convention", "reference"), ("count", 4)]:
        assert cache.load(ReferenceKey(**{**key.__dict__, field: value})) is None, field
    # a file at the right name holding another key (or garbage) is not trusted
    other = ReferenceKey(**{**key.__dict__, "count": 4})
    cache.path(other).write_bytes(cache.path(key).read_bytes())
    assert cache.load(other) is None
    cache.path(key).write_bytes(b"not a checkpoint")
    assert cache.load(key) is None


def test_batches_are_split_round_robin_and_reassembled_in_order():
    n, batch, world = 23, 4, 3  # 6 batches, the last one short
    assert global_batches(n, batch)[-1] == (20, 23)
    rows = torch.arange(n, dtype=torch.float32)[:, None]
    n_max = len(rank_batches(n, batch, 0, world)) * batch
    gathered = torch.full((world, n_max, 1), -1.0)
    for r in range(world):
        local = torch.cat([rows[s:e] for b, (s, e) in enumerate(global_batches(n, batch)) if b % world == r])
        gathered[r, : len(local)] = local
    assert torch.equal(assemble(gathered, n, batch, world), rows)


# The callback end to end, against an independent recomputation ----------------------------------------------
def test_callback_scores_match_an_independent_recomputation(tiny_checkpoint, tmp_path):
    model = load_model(tiny_checkpoint)
    callback = evaluation_callback(str(tiny_checkpoint), str(tmp_path / "cache"), every_n_epochs=1, num_samples=36)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=str(tmp_path), callbacks=[callback],
    )
    dm = SyntheticDataModule(batch_size=8, eval_batch_size=8)
    trainer.fit(model, dm)
    assert "val/gen_clf/fid_standard" in trainer.callback_metrics  # evaluated at the end of the epoch
    logged = trainer.test(model, dm, verbose=False)[0]
    results = callback.last_results
    for key, value in results.items():
        assert logged[key] == pytest.approx(value, rel=1e-6), key

    # regenerate the same samples by hand and score them with scipy / numpy / the pure functions
    extractor = build_extractor(f"classifier:{tiny_checkpoint}")
    fakes = []
    for b, (start, stop) in enumerate(global_batches(36, 8)):
        gen = torch.Generator().manual_seed(batch_seed(0, b))
        fakes.append(model.sample(stop - start, generator=gen, use_ema=True))
    fake_images = torch.cat(fakes)
    real_images, _ = dm.test_set.__getitems__(list(range(N_TEST)))
    # the reference convention scores against the reference's real set: its loader (batch 8) drops the last 5
    for conv, n_real in (("standard", N_TEST), ("reference", N_TEST // 8 * 8)):
        fake, real = extractor(fake_images, conv).double(), extractor(real_images[:n_real], conv).double()
        assert results[f"test/gen_clf/fid_{conv}"] == pytest.approx(fid_scipy(fake.numpy(), real.numpy()), rel=1e-4)
        p, r = knn_scipy(fake.numpy(), real.numpy())
        assert results[f"test/gen_clf/precision_knn_{conv}"] == pytest.approx(p, abs=1e-9)
        assert results[f"test/gen_clf/recall_knn_{conv}"] == pytest.approx(r, abs=1e-9)
        p, r = prd_precision_recall(canonical(fake.float()), canonical(real.float()), num_clusters=5, num_runs=1)
        assert results[f"test/gen_clf/precision_prd_{conv}"] == pytest.approx(p, abs=1e-9)
        assert results[f"test/gen_clf/recall_prd_{conv}"] == pytest.approx(r, abs=1e-9)

    # provenance of both evaluations (end of epoch 0, then test), and the sample grid
    records = json.loads((tmp_path / "generative_eval.json").read_text())["evaluations"]
    assert [r["stage"] for r in records] == ["val", "test"]
    test = records[1]
    assert test["num_generated"] == 36 and test["num_reference"] == {"clf/standard": N_TEST, "clf/reference": 56}
    assert test["reference_split"] == "test" and test["dataset"] == "synthetic"
    assert test["sampler"] == "ddpm_ancestral" and test["sampling_steps"] == 50
    assert test["weights"] == "ema" and test["seed"] == 0 and test["world_size"] == 1
    assert test["checkpoint"] is None  # the in-memory model, no ckpt_path
    assert test["extractors"]["clf"]["checkpoint"] == str(tiny_checkpoint)
    assert test["reference_source"] == {"clf/standard": "memory", "clf/reference": "memory"}
    assert test["results"] == results
    from PIL import Image

    # the first global batch (8 samples of 16 px, grid_size 16): 2 columns × 4 rows with 2 px padding
    assert Image.open(test["sample_grid"]).size == (2 * 18 + 2, 4 * 18 + 2)
    assert np.isfinite(list(results.values())).all()
