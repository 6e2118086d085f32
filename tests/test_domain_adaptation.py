"""Domain-adaptation pairs and the two-stage run: shapes of each pair, what each stage trains on, and the driver
(stage 1 joint on the source, stage 2 diffusion-only on the target from the stage-1 weights with the head frozen,
target test accuracy before and after). Data are fixture files in the real formats under a fake
``$JOINTDIFF_DATA_ROOT``."""

from __future__ import annotations

import json
from pathlib import Path

import fixtures as fx  # tests/ is on sys.path (rootdir conftest, no package)
import pytest
import torch

from jointdiff.cli import main as cli_main
from jointdiff.data import DomainAdaptationDataModule, domain_adaptation_pair
from jointdiff.data.semisupervised import UNLABELLED
from jointdiff.models import JointDiffusion
from jointdiff.models.checkpoints import CLASS_KEY
from jointdiff.workflow.domain_adaptation import Plateau, run_simultaneous, train_stage1
from jointdiff.workflow.domain_adaptation import run as run_adaptation

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


TINY_DA = [  # a tiny model and loop for the drivers' end-to-end runs on the fixture files
    "--model.init_args.model_channels", "16", "--model.init_args.norm_groups", "8",
    "--model.init_args.num_res_blocks", "1", "--model.init_args.attention_downsample", "[]",
    "--model.init_args.diffusion_steps", "10", "--model.init_args.classifier_augmentation", "off",
    "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "16",
    "--data.init_args.download", "false",
]


def test_two_stage_driver_end_to_end(data_root, tmp_path):
    tiny = TINY_DA
    out = tmp_path / "run"
    # the composition `jointdiff paper` runs for Table 6
    paper = ["-c", str(REPO / "configs/paper/data/da_usps_mnist.yaml"),
             "-c", str(REPO / "configs/paper/models/joint.yaml"), "--test_after_fit=false"]
    summary = run_adaptation(str(REPO / "configs/base/default.yaml"), str(out), extra=paper + tiny, stage2_lr=3e-5)
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
    # the source's test accuracy beside the target's, and both again after AdaBN on stage 2's (target) images
    for when in ("source_test_before", "source_test_after", "target_test_after_adabn", "source_test_after_adabn"):
        assert set(summary[when]) == {"test/acc", "test/acc_ema", "test/acc_raw"}, when
    stage2_data = DomainAdaptationDataModule("usps", "mnist", stage="target", download=False)
    stage2_data.setup()
    n = len(stage2_data.train_set)  # one pass over stage 2's images, in batches of 8 (the last one may be dropped)
    assert n // 8 * 8 <= summary["adabn_images"] <= n

    # the source control with route b's statistics: stage 2 on the source images, the head's BatchNorm following them
    control = run_adaptation(str(REPO / "configs/base/default.yaml"), str(tmp_path / "control"), extra=paper + tiny,
                             head_statistics="target", stage2_data="source", adabn=False)
    assert control["stage2_data"] == "source" and "target_test_after_adabn" not in control
    one = torch.load(control["stage1"]["checkpoint"], weights_only=True)["state_dict"]
    two = torch.load(control["stage2"]["checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(one[k], two[k]) for k in head if "running" not in k and "tracked" not in k)
    assert any(not torch.equal(one[k], two[k]) for k in head if "running_mean" in k)


@pytest.mark.parametrize("lr", [0.0, -1e-4, float("nan")])
def test_a_non_positive_stage2_lr_is_refused_before_stage_one(tmp_path, lr):
    with pytest.raises(ValueError, match="--stage2_lr must be a positive learning rate"):
        run_adaptation(str(REPO / "experiments/evidence/configs/da.yaml"), str(tmp_path / "run"), stage2_lr=lr)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    with pytest.raises(SystemExit) as exit_info:  # the command line: one line from argparse
        cli_main(["adapt", "--config", str(REPO / "experiments/evidence/configs/da.yaml"), "--out", str(tmp_path),
                  "--stage2_lr", str(lr)])
    assert exit_info.value.code == 2


def test_the_source_control_trains_on_unlabelled_source_images_and_can_test_on_the_source(data_root):
    src, tgt = domain_adaptation_pair("usps", "mnist", download=False)
    src.setup(), tgt.setup()
    control = DomainAdaptationDataModule("usps", "mnist", stage="source_unlabelled", download=False)
    on_source = DomainAdaptationDataModule("usps", "mnist", stage="source", test_domain="source", download=False)
    control.setup(), on_source.setup()
    assert torch.equal(control.train_set.images, src.train_set.images)
    assert bool((control.train_set.targets == UNLABELLED).all())  # no label reaches a loss
    assert torch.equal(control.val_set.images, tgt.val_set.images)  # monitoring stays on the target
    assert torch.equal(control.test_set.images, tgt.test_set.images)
    assert torch.equal(on_source.test_set.images, src.test_set.images)
    assert torch.equal(on_source.test_set.targets, src.test_set.targets)
    with pytest.raises(ValueError, match="stage must be"):
        DomainAdaptationDataModule("usps", "mnist", stage="both", download=False)


def test_the_simultaneous_stage_holds_the_labelled_source_and_the_target_without_labels(data_root):
    src, tgt = domain_adaptation_pair("usps", "mnist", download=False)
    src.setup(), tgt.setup()
    for mode in ("buffer", "stream"):
        dm = DomainAdaptationDataModule("usps", "mnist", stage="simultaneous", semi_supervised_mode=mode,
                                        batch_size=8, download=False)
        dm.setup()
        n = len(src.train_set)
        assert torch.equal(dm.train_set.images, torch.cat([src.train_set.images, tgt.train_set.images]))
        assert torch.equal(dm.train_set.targets[:n], src.train_set.targets)  # every source label kept ...
        assert bool((dm.train_set.targets[n:] == UNLABELLED).all())  # ... no target label
        assert torch.equal(dm.val_set.images, tgt.val_set.images)
        assert torch.equal(dm.test_set.images, tgt.test_set.images)
        loader = dm.train_dataloader()
        if mode == "buffer":  # one shuffled stream of both domains
            assert len(loader.dataset) == n + len(tgt.train_set)
        else:  # a labelled stream of exactly the source beside the stream of all images
            assert torch.equal(loader["labelled"].dataset.images.sort(0).values, src.train_set.images.sort(0).values)
            assert bool((loader["labelled"].dataset.targets != UNLABELLED).all())
    with pytest.raises(ValueError, match="needs stage=simultaneous"):
        DomainAdaptationDataModule("usps", "mnist", stage="target", semi_supervised_mode="stream", download=False)


@pytest.mark.parametrize("mode", ["buffer", "stream"])
def test_simultaneous_driver_trains_the_head_on_source_labels_only(data_root, tmp_path, mode):
    out = tmp_path / "run"
    summary = run_simultaneous(str(REPO / "configs/base/default.yaml"), str(out), extra=[
        "-c", str(REPO / "configs/paper/data/da_usps_mnist.yaml"), "-c", str(REPO / "configs/paper/models/joint.yaml"),
        "--test_after_fit=false", *TINY_DA, "--trainer.max_steps", "8",
    ], semi_supervised_mode=mode)
    assert json.loads((out / "domain_adaptation.json").read_text()) == summary
    assert summary["simultaneous"]["steps"] == 8 and summary["semi_supervised_mode"] == mode
    for domain, n_test in (("target_test", 20), ("source_test", 20)):
        acc = summary[domain]["test/acc"]
        assert 0.0 <= acc <= 1.0 and abs(acc * n_test - round(acc * n_test)) < 1e-5
    ckpt = torch.load(summary["simultaneous"]["checkpoint"], weights_only=True)
    assert ckpt["hyper_parameters"]["skip_classifier_loss"] is False
    # classifier terms from the source's labels: one per step with the labelled stream; with the buffer, one each
    # time the labelled images of the mixed batches (about 45 % of 8 per step) filled a batch of 8
    batches = ckpt[JointDiffusion.TRAIN_STATE_KEY]["classifier_batches"]
    assert batches == 8 if mode == "stream" else 1 <= batches < 8


F32 = dict(rtol=1e-5, atol=1e-6)  # the running statistics are float32; the hand computation float64
HEAD_TINY = dict(image_size=8, channels=1, num_classes=3, model_channels=16, norm_groups=8, channel_mult=[1, 2],
                 num_res_blocks=1, attention_downsample=[], diffusion_steps=10, dropout=0.0, head_dropout=0.0,
                 classifier_augmentation="off")


def _head_input(net, x: torch.Tensor) -> torch.Tensor:
    """[z, t=0]: what the head's first BatchNorm normalises (its Dropout is 0 here)."""
    from jointdiff.nn.heads import pooled_features

    t0 = torch.zeros(len(x), dtype=torch.long)
    return torch.cat([pooled_features(*net.unet.encode(x, t0)), t0[:, None].float()], dim=1)


@pytest.mark.parametrize("statistics", ["frozen", "target"])
def test_stage_two_head_statistics_follow_the_setting(statistics):
    torch.manual_seed(0)
    model = JointDiffusion(skip_classifier_loss=True, head_statistics=statistics, **HEAD_TINY).train()
    bn = model.network.head.layers[1]
    with torch.no_grad():  # loaded statistics that differ from a fresh layer's
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        f = _head_input(model.network, x).double()
    model.training_step((x, torch.full((6,), UNLABELLED)), 0)
    if statistics == "frozen":  # the head never ran
        assert torch.equal(bn.running_mean, mean0) and torch.equal(bn.running_var, var0)
    else:  # one BatchNorm update with this batch's mean and unbiased variance (momentum 0.1)
        m = bn.momentum
        torch.testing.assert_close(bn.running_mean.double(), (1 - m) * mean0.double() + m * f.mean(0), **F32)
        want_var = (1 - m) * var0.double() + m * f.var(0, unbiased=True)
        torch.testing.assert_close(bn.running_var.double(), want_var, **F32)
    assert not any(p.requires_grad for p in model.network.head.parameters())
    with pytest.raises(ValueError, match="set skip_classifier_loss=true"):
        JointDiffusion(head_statistics="target", **HEAD_TINY)


def test_adabn_replaces_the_head_statistics_by_their_average_over_the_images():
    from jointdiff.models.head_statistics import head_batchnorms, reestimate_head_statistics

    torch.manual_seed(1)
    net = JointDiffusion(**{**HEAD_TINY, "head_dropout": 0.5}).network.train()
    weights = {k: v.clone() for k, v in net.head.state_dict().items() if "running" not in k and "tracked" not in k}
    batches = [torch.rand(5, 1, 8, 8) * 2 - 1, torch.rand(7, 1, 8, 8) * 2 - 1]
    assert reestimate_head_statistics(net, batches) == 12
    bn1, bn2 = head_batchnorms(net)
    linear, act = net.head.layers[2], net.head.layers[3]
    with torch.no_grad():  # by hand, in float64: each layer's statistics are the mean of its per-batch statistics
        feats = [_head_input(net, x).double() for x in batches]
        torch.testing.assert_close(bn1.running_mean.double(), torch.stack([f.mean(0) for f in feats]).mean(0), **F32)
        torch.testing.assert_close(bn1.running_var.double(), torch.stack([f.var(0) for f in feats]).mean(0), **F32)
        hidden = []
        for f in feats:  # BatchNorm normalises with the batch's own (biased) statistics in train mode
            y = (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + bn1.eps) * bn1.weight.double() \
                + bn1.bias.double()
            hidden.append(act(y @ linear.weight.double().T + linear.bias.double()))  # dropout is off
        want_mean = torch.stack([h.mean(0) for h in hidden]).mean(0)
        torch.testing.assert_close(bn2.running_mean.double(), want_mean, **F32)
        torch.testing.assert_close(bn2.running_var.double(), torch.stack([h.var(0) for h in hidden]).mean(0), **F32)
    assert all(torch.equal(v, net.head.state_dict()[k]) for k, v in weights.items())  # weights untouched
    assert net.training and bn1.momentum == 0.1  # modes and momentum restored


def test_val_domain_source_validates_on_the_sources_held_out_part(data_root):
    src, tgt = domain_adaptation_pair("usps", "mnist", download=False)
    src.setup(), tgt.setup()
    dm = DomainAdaptationDataModule("usps", "mnist", stage="source", val_domain="source", download=False)
    dm.setup()
    assert torch.equal(dm.val_set.images, src.val_set.images) and torch.equal(dm.val_set.targets, src.val_set.targets)
    assert torch.equal(dm.test_set.images, tgt.test_set.images)  # the reported number stays the target's
    with pytest.raises(ValueError, match="val_domain must be"):
        DomainAdaptationDataModule("usps", "mnist", val_domain="both", download=False)


@pytest.mark.parametrize(("tolerances", "expect_reached"), [((1.0, 10.0), True), ((0.0, 0.0), False)])
def test_until_plateau_stops_each_stage_on_its_own_curve(data_root, tmp_path, tolerances, expect_reached):
    plateau = Plateau(every=1, min_steps=2, max_steps=4, accuracy_tolerance=tolerances[0],
                      loss_tolerance=tolerances[1])
    paper = ["-c", str(REPO / "configs/paper/data/da_usps_mnist.yaml"),
             "-c", str(REPO / "configs/paper/models/joint.yaml"), "--test_after_fit=false"]
    summary = run_adaptation(str(REPO / "configs/base/default.yaml"), str(tmp_path / "run"), extra=paper + TINY_DA,
                             adabn=False, plateau=plateau)
    one, two = summary["stage1"], summary["stage2"]
    assert summary["plateau"]["every"] == 1
    assert one["plateau_reached"] is two["plateau_reached"] is expect_reached
    # huge tolerances: flat at the first validation with two windows at or after min_steps (step 2); stage 2 at
    # least stage 1's steps. Zero tolerances: a real curve never repeats its mean, so both run to max_steps.
    assert one["steps"] == two["steps"] == (2 if expect_reached else 4)
    assert one["validation_steps"] == list(range(1, one["steps"] + 1))
    assert set(one["validation_curve"]) == {"val/acc_ema", "val/diffusion_loss"}  # stage 1: the source's curve
    assert set(two["validation_curve"]) == {"val/diffusion_loss"}  # stage 2: the target's diffusion loss
    with pytest.raises(ValueError, match="stage2_steps or plateau"):
        run_adaptation(str(REPO / "configs/base/default.yaml"), str(tmp_path / "x"), stage2_steps=3, plateau=plateau)


def test_arms_share_one_stage_one_and_stage_two_leaves_a_tested_curve(data_root, tmp_path):
    paper = ["-c", str(REPO / "configs/paper/data/da_usps_mnist.yaml"),
             "-c", str(REPO / "configs/paper/models/joint.yaml"), "--test_after_fit=false"]
    base = str(REPO / "configs/base/default.yaml")
    stage1 = train_stage1(base, str(tmp_path / "shared"), extra=paper + TINY_DA)
    assert json.loads((tmp_path / "shared" / "stage1.json").read_text()) == stage1 and stage1["steps"] == 3
    arm = run_adaptation(base, str(tmp_path / "arm"), extra=paper + TINY_DA, stage1=stage1, curve_every=1)
    assert not (tmp_path / "arm" / "stage1").exists()  # stage 1 was not trained again
    assert arm["stage1"]["checkpoint"] == stage1["checkpoint"] and arm["target_test_before"] == stage1["target_test"]
    two = torch.load(arm["stage2"]["checkpoint"], weights_only=True)
    assert two["hyper_parameters"]["init_from"] == stage1["checkpoint"]
    assert [p["step"] for p in arm["curve"]] == [1, 2, 3]
    # the curve's last point is stage 2's final weights, tested again from its checkpoint file
    assert arm["curve"][-1]["target_test"] == arm["target_test_after"]
    assert arm["curve"][-1]["target_test_adabn"] == arm["target_test_after_adabn"]
    with pytest.raises(FileNotFoundError, match="train stage 1 again"):
        run_adaptation(base, str(tmp_path / "x"), stage1={**stage1, "checkpoint": str(tmp_path / "gone.ckpt")})


def test_the_designed_experiments_runner_runs_every_unit_and_resumes(data_root, tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(str(REPO / "experiments" / "evidence"))  # its sibling modules (blocks.py)
    spec = importlib.util.spec_from_file_location("da_decided", REPO / "experiments/evidence/da_decided.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    # lengths are the runner's; T stays the config's (the stand-alone classifier has no diffusion_steps)
    drop = {"--trainer.max_steps", "--model.init_args.diffusion_steps"}
    tiny = [a for i, a in enumerate(TINY_DA) if a not in drop and TINY_DA[i - 1] not in drop]
    kw = dict(results=tmp_path / "results", runs=tmp_path / "runs", overrides=tiny,
              plateau=Plateau(every=1, min_steps=2, max_steps=3, accuracy_tolerance=1.0, loss_tolerance=10.0),
              curve_every=1)
    with pytest.raises(SystemExit, match="needs stage 1 first"):
        runner.run_unit("frozen", "usps:mnist", 0, **kw)
    for unit in runner.UNITS:
        runner.run_unit(unit, "usps:mnist", 0, **kw)
    folder = tmp_path / "results" / "usps_mnist_seed0"
    results = {u: json.loads((folder / f"{u}.json").read_text()) for u in runner.UNITS}
    steps1 = results["stage1"]["steps"]
    assert steps1 == 2 and (folder / "stage1.ckpt").is_file()
    assert "optimizer_states" not in torch.load(folder / "stage1.ckpt", weights_only=True)
    for arm in ("frozen", "target", "source_control"):  # every arm from the one kept stage 1, with its curve
        assert results[arm]["stage1"]["checkpoint"] == str(folder / "stage1.ckpt")
        assert results[arm]["target_test_before"] == results["stage1"]["target_test"]
        assert [p["step"] for p in results[arm]["curve"]] == list(range(1, results[arm]["stage2"]["steps"] + 1))
    assert results["source_control"]["stage2_data"] == "source" and results["target"]["head_statistics"] == "target"
    control = results["source_control"]  # its own domain along the way too: the last point is its final weights
    assert control["curve"][-1]["source_test"] == control["source_test_after"]
    assert "source_test" not in results["frozen"]["curve"][-1]
    simultaneous = torch.load(results["simultaneous"]["simultaneous"]["checkpoint"], weights_only=True)
    # (validation every 3 steps, 4 steps: the last checkpoint is the final step because the driver writes it)
    assert simultaneous["global_step"] == steps1 + results["frozen"]["stage2"]["steps"]
    for reference in ("source_only", "target_bound"):
        assert torch.load(results[reference]["checkpoint"], weights_only=True)["global_step"] == steps1
    assert torch.load(results["source_only"]["checkpoint"], weights_only=True)[CLASS_KEY].endswith(
        "StandaloneClassifier")
    # the upper bound trains on the labelled target: its reported number is the target's own test split
    assert results["target_bound"]["trained_on"] == "mnist (labelled)"
    # the report: the table's numbers are the JSONs' (one seed: the mean is the value), and the plot is written
    text = runner.table(tmp_path / "results")
    frozen = results["frozen"]
    row = next(line for line in text.splitlines() if "| frozen |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["usps:mnist", "frozen", "1", str(frozen["stage2"]["steps"])]
    assert cells[4] == f"{frozen['target_test_before']['test/acc_ema']:.3f}"
    assert cells[5] == (f"{frozen['target_test_after']['test/acc_ema']:.3f} / "
                        f"{frozen['target_test_after']['test/acc_raw']:.3f}")
    assert "source control, on the source" in text and "target upper bound" in text
    png = runner.plot(tmp_path / "da.png", tmp_path / "results")
    assert png.stat().st_size > 10_000
    before = (folder / "frozen.json").stat().st_mtime_ns
    runner.run_unit("frozen", "usps:mnist", 0, **kw)  # a finished unit is skipped
    assert (folder / "frozen.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("flags", [["--until_plateau", "--stage2_steps", "3"], ["--until_plateau", "--mode",
                                   "simultaneous"], ["--curve_every", "0"], ["--stage1", "missing/stage1.json"]])
def test_conflicting_or_bad_length_flags_are_refused_in_one_line(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["adapt", "--config", str(REPO / "experiments/evidence/configs/da_decided.yaml"),
                  "--out", str(tmp_path / "run"), *flags])
    assert exit_info.value.code == 2 and not (tmp_path / "run").exists()
    assert "jointdiff adapt: error:" in capsys.readouterr().err  # argparse's one line, before any data is read
