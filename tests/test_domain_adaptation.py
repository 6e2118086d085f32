"""Domain-adaptation pairs and the two-stage run: shapes of each pair, what each stage trains on, and the driver
(stage 1 joint on the source, stage 2 diffusion-only on the target from the stage-1 weights with the head frozen,
target test accuracy before and after). Data are fixture files in the real formats under a fake
``$JOINTDIFF_DATA_ROOT``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import fixtures as fx  # tests/ is on sys.path (rootdir conftest, no package)
import pytest
import torch

from jointdiff.data import DomainAdaptationDataModule, domain_adaptation_pair
from jointdiff.data.semisupervised import UNLABELLED
from jointdiff.models import JointDiffusion

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    fx.write_idx(root / "mnist", n_train=60, n_test=20, seed=1)
    fx.write_usps(root / "usps", n_train=50, n_test=20, seed=2)
    fx.write_svhn(root / "svhn", n_train=30, n_test=20, seed=3)
    monkeypatch.setenv("JOINTDIFF_DATA_ROOT", str(root))
    monkeypatch.setenv("JOINTDIFF_CACHE", str(tmp_path / "cache"))
    return root


@pytest.mark.parametrize(("source", "target", "shape"), [
    ("mnist", "usps", (1, 28, 28)), ("usps", "mnist", (1, 28, 28)), ("svhn", "mnist", (3, 32, 32)),
])
def test_pairs_share_one_shape(data_root, source, target, shape):
    src, tgt = domain_adaptation_pair(source, target, download=False, val_fraction=0.0)
    for dm in (src, tgt):
        dm.setup()
        assert (dm.channels, dm.image_size, dm.image_size) == shape == tuple(dm.test_set.images.shape[1:])
        assert dm.num_classes == 10


def test_stages_train_on_labelled_source_then_unlabelled_target(data_root):
    src, tgt = domain_adaptation_pair("usps", "mnist", download=False)
    src.setup(), tgt.setup()
    one = DomainAdaptationDataModule("usps", "mnist", stage="source", download=False)
    two = DomainAdaptationDataModule("usps", "mnist", stage="target", download=False)
    one.setup(), two.setup()
    assert torch.equal(one.train_set.images, src.train_set.images)
    assert torch.equal(one.train_set.targets, src.train_set.targets)
    assert torch.equal(two.train_set.images, tgt.train_set.images) and bool((two.train_set.targets == UNLABELLED).all())
    for dm in (one, two):  # validation: held-out target training images; test: the target's test split
        assert torch.equal(dm.val_set.images, tgt.val_set.images)
        assert torch.equal(dm.val_set.targets, tgt.val_set.targets)
        assert torch.equal(dm.test_set.images, tgt.test_set.images) and len(dm.test_set) == 20
        assert (dm.image_size, dm.channels, dm.num_classes) == (28, 1, 10)


def test_init_from_and_skip_classifier_loss_arguments(tmp_path):
    tiny = dict(model_channels=16, norm_groups=8, num_res_blocks=1, attention_downsample=[], diffusion_steps=10)
    with pytest.raises(ValueError, match="needs classifier_weight > 0"):
        JointDiffusion(classifier_weight=0.0, skip_classifier_loss=True, **tiny)
    model = JointDiffusion(skip_classifier_loss=True, **tiny)
    assert not any(p.requires_grad for p in model.network.head.parameters())
    assert all(p.requires_grad for p in model.network.unet.parameters())
    with pytest.raises(FileNotFoundError, match="init_from checkpoint not found"):
        JointDiffusion(init_from=str(tmp_path / "none.ckpt"), **tiny).setup("fit")
    source = JointDiffusion(**tiny)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "a.ckpt")
    wider = JointDiffusion(init_from=str(tmp_path / "a.ckpt"), **{**tiny, "model_channels": 32})
    with pytest.raises(ValueError, match="does not fit this architecture"):
        wider.setup("fit")
    same = JointDiffusion(init_from=str(tmp_path / "a.ckpt"), **tiny)
    same.setup("fit")
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), source.state_dict().values(), strict=True))
    with torch.no_grad():
        next(same.network.parameters()).add_(1.0)
    changed = next(same.network.parameters()).clone()
    same.setup("test")  # e.g. --test_after_fit: the trained weights must not be replaced again
    assert torch.equal(next(same.network.parameters()), changed)


def test_stage_two_continues_the_stage_one_ema(tmp_path):
    tiny = dict(model_channels=16, norm_groups=8, num_res_blocks=1, attention_downsample=[], diffusion_steps=10,
                ema_decay=0.999)
    torch.manual_seed(0)
    stage1 = JointDiffusion(**tiny)
    with torch.no_grad():  # an average that differs from the raw weights, as after a real stage 1
        for p in stage1.ema.module.parameters():
            p.add_(torch.randn_like(p))
    stage1.ema.num_updates = 800
    torch.save({"state_dict": stage1.state_dict(), "global_step": 800}, tmp_path / "stage1.ckpt")
    stage2 = JointDiffusion(init_from=str(tmp_path / "stage1.ckpt"), skip_classifier_loss=True, **tiny)
    stage2.setup("fit")
    assert stage2.ema.num_updates == 800
    loaded = [p.clone() for p in stage2.ema.module.parameters()]
    with torch.no_grad():
        for p in stage2.network.parameters():
            p.add_(0.5)
    stage2.ema.update(stage2.network)  # stage 2's first step: the 801st update, decay min(0.999, 802/811)
    d = min(0.999, 802 / 811)
    for old, new, raw in zip(loaded, stage2.ema.module.parameters(), stage2.network.parameters(), strict=True):
        torch.testing.assert_close(new, d * old + (1 - d) * raw)
    # a checkpoint written before the EMA kept its count: the count is the checkpoint's global step
    legacy = {k: v for k, v in stage1.state_dict().items() if k != "ema._extra_state"}
    torch.save({"state_dict": legacy, "global_step": 640}, tmp_path / "legacy.ckpt")
    again = JointDiffusion(init_from=str(tmp_path / "legacy.ckpt"), **tiny)
    again.setup("fit")
    assert again.ema.num_updates == 640


def test_two_stage_driver_end_to_end(data_root, tmp_path):
    spec = importlib.util.spec_from_file_location("domain_adaptation", REPO / "experiments" / "domain_adaptation.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    tiny = [
        "--model.init_args.model_channels", "16", "--model.init_args.norm_groups", "8",
        "--model.init_args.num_res_blocks", "1", "--model.init_args.attention_downsample", "[]",
        "--model.init_args.diffusion_steps", "10", "--model.init_args.classifier_augmentation", "off",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "16",
        "--data.init_args.download", "false",
    ]
    out = tmp_path / "run"
    # the composition `jointdiff paper` runs for Table 6
    paper = ["-c", str(REPO / "configs/paper/data/da_usps_mnist.yaml"),
             "-c", str(REPO / "configs/paper/models/joint.yaml"), "--test_after_fit=false"]
    summary = driver.run(str(REPO / "configs/base/default.yaml"), str(out), extra=paper + tiny, stage2_lr=3e-5)
    assert json.loads((out / "domain_adaptation.json").read_text()) == summary
    assert summary["stage1"]["steps"] == summary["stage2"]["steps"] == 3  # D15 default: as many steps as stage 1
    for key in ("test/acc", "test/acc_ema", "test/acc_raw"):
        for when in ("target_test_before", "target_test_after"):
            acc = summary[when][key]
            assert 0.0 <= acc <= 1.0 and abs(acc * 20 - round(acc * 20)) < 1e-5  # a share of the 20 MNIST test images
    one = torch.load(summary["stage1"]["checkpoint"], weights_only=True)
    two = torch.load(summary["stage2"]["checkpoint"], weights_only=True)
    assert two["hyper_parameters"]["init_from"] == summary["stage1"]["checkpoint"]
    assert one["hyper_parameters"]["lr"] != 3e-5  # stage 1 keeps the config's rate ...
    assert two["hyper_parameters"]["lr"] == 3e-5 == summary["stage2"]["lr"]  # ... stage 2 runs at --stage2_lr
    assert all(group["lr"] == 3e-5 for opt in two["optimizer_states"] for group in opt["param_groups"])
    one, two = one["state_dict"], two["state_dict"]
    head = [k for k in one if k.startswith("network.head.")]
    encoder = [k for k in one if k.startswith("network.unet.input_blocks.") and one[k].is_floating_point()]
    assert head and encoder
    assert all(torch.equal(one[k], two[k]) for k in head)  # frozen head: weights and BatchNorm statistics as loaded
    assert any(not torch.equal(one[k], two[k]) for k in encoder)  # the encoder adapted to the target
    assert int(one["ema._extra_state"]) == 3 and int(two["ema._extra_state"]) == 6  # one EMA over both stages


@pytest.mark.parametrize("lr", [0.0, -1e-4, float("nan")])
def test_a_non_positive_stage2_lr_is_refused_before_stage_one(tmp_path, lr):
    spec = importlib.util.spec_from_file_location("domain_adaptation", REPO / "experiments" / "domain_adaptation.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    with pytest.raises(ValueError, match="--stage2_lr must be a positive learning rate"):
        driver.run(str(REPO / "experiments" / "evidence" / "configs" / "da.yaml"), str(tmp_path / "run"), stage2_lr=lr)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    with pytest.raises(SystemExit) as exit_info:  # the command line: one line from argparse
        driver.main(["--config", str(REPO / "experiments" / "evidence" / "configs" / "da.yaml"),
                     "--stage2_lr", str(lr)])
    assert exit_info.value.code == 2
