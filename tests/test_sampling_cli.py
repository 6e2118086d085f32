"""``jointdiff sample`` end to end on a tiny checkpoint: outputs, α=0 = unconditional, argument errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_checkpoint

from jointdiff.cli import main as cli_main
from jointdiff.diffusion.engine import PerSampleNoise
from jointdiff.diffusion.samplers import ddpm_sample
from jointdiff.images import to_uint8
from jointdiff.models.checkpoints import load_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    write_checkpoint(path)
    return str(path)


def run(*args):
    cli_main(["sample", *map(str, args), "--progress", "false"])


def test_joint_sampler_writes_grids_npz_and_json(ckpt, tmp_path):
    out = tmp_path / "joint"
    run("--checkpoint", ckpt, "--sampler", "joint", "--num", 3, "--classes", "[0, 2]", "--alpha", 5,
        "--batch_size", 2, "--output", out, "--judge", ckpt)
    assert (out / "class_0.png").is_file() and (out / "class_2.png").is_file()
    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (6, 8, 8, 1) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].tolist() == [0, 0, 0, 2, 2, 2]
    record = json.loads((out / "sample.json").read_text())
    assert record["sampler"] == "joint" and record["alpha"] == 5.0 and len(record["groups"]) == 2
    assert all(0.0 <= g["judge_hit_rate"] <= 1.0 and "own_head_hit_rate" in g for g in record["groups"])


def test_alpha_zero_cli_equals_ddpm_cli(ckpt, tmp_path):
    """Through the CLI, α=0 gives the ddpm sampler's images for the same seed. (A random-weight network's samples
    saturate in uint8, so that α>0 changes them is checked on floats in test_conditional_sampling.py.)"""
    run("--checkpoint", ckpt, "--sampler", "ddpm", "--num", 4, "--seed", 3, "--output", tmp_path / "a")
    run("--checkpoint", ckpt, "--sampler", "joint", "--alpha", 0, "--classes", "[1]", "--num", 4, "--seed", 3,
        "--output", tmp_path / "b")
    a, b = np.load(tmp_path / "a" / "samples.npz"), np.load(tmp_path / "b" / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"])
    # and the file holds exactly the sampler's output for that seed: sample k's noise from its own (seed, k) stream
    model = load_model(ckpt)
    x = ddpm_sample(model.eval_network, model.diffusion, (4, 1, 8, 8), generator=PerSampleNoise(3, range(4)))
    assert np.array_equal(a["arr_0"], to_uint8(x).permute(0, 2, 3, 1).numpy())
    assert len(np.unique(a["arr_0"][0])) > 1


def test_ddim_and_guidance_run(ckpt, tmp_path):
    run("--checkpoint", ckpt, "--sampler", "ddim", "--steps", 5, "--num", 2, "--output", tmp_path / "d1")
    run("--checkpoint", ckpt, "--sampler", "ddim", "--steps", 5, "--num", 2, "--output", tmp_path / "d2")
    assert np.array_equal(np.load(tmp_path / "d1" / "samples.npz")["arr_0"],
                          np.load(tmp_path / "d2" / "samples.npz")["arr_0"])
    # the joint model's noisy head doubles as a noise-aware classifier for guidance
    run("--checkpoint", ckpt, "--sampler", "guidance", "--classifier", ckpt, "--scale", 2, "--classes", "[0]",
        "--num", 2, "--output", tmp_path / "g")
    assert json.loads((tmp_path / "g" / "sample.json").read_text())["scale"] == 2.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "[0, 3]"], "unknown class 3"),
        (["--alpha", "-1"], "alpha must be finite and >= 0"),
        (["--sampler", "guidance"], "needs --classifier"),
        (["--sampler", "ddpm", "--steps", "5"], "--steps applies to --sampler ddim and joint"),
        (["--sampler", "joint", "--steps", "31"], "sample_steps must be in 1..30"),
        (["--sampler", "ddim", "--steps", "31"], "sample_steps must be in 1..30"),
        (["--sampler", "ddpm", "--classes", "[1]"], "is unconditional"),
        (["--attributes", '["1,0,1"]'], "multi-class: give --classes"),
    ],
)
def test_bad_arguments_are_rejected(ckpt, tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        run("--checkpoint", ckpt, "--num", 1, "--output", tmp_path, *args)


def test_models_without_head_or_file(tmp_path):
    path = tmp_path / "ddpm.ckpt"
    write_checkpoint(path, classifier_weight=0.0)
    with pytest.raises(ValueError, match="vanilla DDPM"):
        run("--checkpoint", path, "--sampler", "joint", "--output", tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run("--checkpoint", tmp_path / "missing.ckpt", "--output", tmp_path)


def write_noise_classifier(path, **overrides):
    from jointdiff.models.noise_aware import NoiseAwareClassifier

    torch.manual_seed(1)
    clf = NoiseAwareClassifier(**{**dict(image_size=8, channels=1, num_classes=3, model_channels=16,
                                         channel_mult=[1, 2], num_res_blocks=1, attention_downsample=[],
                                         head_channels=16, norm_groups=8, diffusion_steps=30), **overrides})
    ckpt = {"state_dict": clf.state_dict(), "hyper_parameters": dict(clf.hparams)}
    clf.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)


def test_guidance_with_a_noise_aware_classifier_checkpoint(ckpt, tmp_path):
    clf = tmp_path / "noise_clf.ckpt"
    write_noise_classifier(clf)
    run("--checkpoint", ckpt, "--sampler", "guidance", "--classifier", clf, "--scale", 0, "--classes", "[2]",
        "--num", 3, "--seed", 5, "--output", tmp_path / "g0")
    # scale 0 = plain ancestral sampling with x̂0 clipped, through the command as well
    model = load_model(ckpt)
    x = ddpm_sample(model.eval_network, model.diffusion, (3, 1, 8, 8), generator=PerSampleNoise(5, range(3)),
                    clip_denoised=True)
    assert np.array_equal(np.load(tmp_path / "g0" / "samples.npz")["arr_0"], to_uint8(x).permute(0, 2, 3, 1).numpy())
    other_T = tmp_path / "noise_clf_T40.ckpt"
    write_noise_classifier(other_T, diffusion_steps=40)
    with pytest.raises(ValueError, match="T=40"):
        run("--checkpoint", ckpt, "--sampler", "guidance", "--classifier", other_T, "--num", 1, "--output", tmp_path)
    wrong_classes = tmp_path / "noise_clf_5.ckpt"
    write_noise_classifier(wrong_classes, num_classes=5)
    with pytest.raises(ValueError, match="5 multiclass outputs"):
        run("--checkpoint", ckpt, "--sampler", "guidance", "--classifier", wrong_classes, "--num", 1,
            "--output", tmp_path)


def test_largest_fitting_batch_doubles_until_out_of_memory():
    from jointdiff.sampling.generate import largest_fitting_batch

    tried = []

    def fits_up_to(n):
        def run(b):
            tried.append(b)
            if b > n:
                raise torch.OutOfMemoryError("simulated")
        return run

    assert largest_fitting_batch(fits_up_to(100), limit=4096) == 64 and tried == [8, 16, 32, 64, 128]
    tried.clear()
    assert largest_fitting_batch(fits_up_to(100), limit=50) == 50 and tried == [8, 16, 32, 50]
    with pytest.raises(RuntimeError, match="does not fit"):
        largest_fitting_batch(fits_up_to(4), limit=4096)


def test_auto_batch_size_on_cpu_and_the_probe_step_of_every_sampler(ckpt, tmp_path):
    from jointdiff.sampling.generate import auto_batch_size, one_reverse_step
    from jointdiff.sampling.loading import load_diffusion_model

    model = load_diffusion_model(ckpt)
    assert auto_batch_size(model, "joint", 300, torch.tensor(1)) == 64
    assert auto_batch_size(model, "ddpm", 5, None) == 5
    guide = (model.eval_network.classify, 3, "multiclass")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for sampler, target in (("ddpm", None), ("ddim", None), ("joint", torch.tensor(2)), ("guidance", torch.tensor(0))):
        one_reverse_step(model, sampler, target, guide)(3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # probing changes nothing
    assert all(p.grad is None for p in model.parameters())  # and leaves no parameter gradients behind
    run("--checkpoint", ckpt, "--sampler", "ddpm", "--num", 3, "--batch_size", "auto", "--output", tmp_path / "a")
    assert json.loads((tmp_path / "a" / "sample.json").read_text())["batch_size"] == 3


def test_clip_denoised_keeps_samples_in_range_and_defaults_to_each_samplers_reference(ckpt):
    from jointdiff.sampling.generate import generate
    from jointdiff.sampling.loading import load_diffusion_model

    model = load_diffusion_model(ckpt)
    with torch.no_grad():
        model.network.unet.out[-1].weight.mul_(40)  # an ε-predictor far off scale, as early in training
        model.ema.module.load_state_dict(model.network.state_dict())

    def draw(sampler, **kw):
        g = torch.Generator().manual_seed(0)
        target = torch.tensor(1) if sampler == "joint" else None
        return generate(model, sampler, 4, target, alpha=2.0, generator=g, **kw)

    for sampler in ("ddpm", "joint"):
        default, clipped = draw(sampler), draw(sampler, clip_denoised=True)
        assert default.abs().max() > 1.5  # the reference sampler does not clamp x̂0 ...
        assert torch.equal(default, draw(sampler, clip_denoised=False))
        assert clipped.abs().max() <= 1.0 + 1e-6  # ... and with clamping the last step returns the clamped x̂0
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.sample(4, generator=g, clip_denoised=True), draw("ddpm", clip_denoised=True))


def test_sample_grid_draws_with_its_clip_setting(tmp_path):
    from types import SimpleNamespace

    from jointdiff.callbacks import SampleGrid
    from jointdiff.diffusion.ddim import RESPACED_ETA

    calls = []

    class Stub:
        device = torch.device("cpu")

        def sample(self, num, generator=None, use_ema=True, progress=False, clip_denoised=False, steps=None,
                   eta=0.0):
            calls.append((clip_denoised, steps, eta))
            return torch.zeros(num, 1, 4, 4)

    trainer = SimpleNamespace(global_step=3, loggers=[])
    for clip in (False, True):
        SampleGrid(num_samples=2, clip_denoised=clip)._sample_and_save(trainer, Stub(), tmp_path)
    SampleGrid(num_samples=2, steps=25, eta=0.5)._sample_and_save(trainer, Stub(), tmp_path)
    assert calls == [(False, None, RESPACED_ETA), (True, None, RESPACED_ETA), (False, 25, 0.5)]
    assert (tmp_path / "samples" / "step_0000003.png").is_file()


def test_respaced_sampling_without_eta_uses_the_validated_default(ckpt, tmp_path):
    """`--steps N` without `--eta` draws with RESPACED_ETA (docs/sampling.md's validation chooses it), the same
    images as naming it; another η gives other images."""
    from jointdiff.diffusion.ddim import RESPACED_ETA

    common = ["--checkpoint", ckpt, "--sampler", "joint", "--steps", 5, "--num", 2, "--classes", "[1]",
              "--clip_denoised", "true"]
    run(*common, "--output", tmp_path / "default")
    run(*common, "--eta", RESPACED_ETA, "--output", tmp_path / "named")
    run(*common, "--eta", 0.5 if RESPACED_ETA != 0.5 else 0.0, "--output", tmp_path / "other")
    record = json.loads((tmp_path / "default" / "sample.json").read_text())
    assert record["eta"] == RESPACED_ETA and record["steps"] == 5
    default, named, other = (np.load(tmp_path / d / "samples.npz")["arr_0"] for d in ("default", "named", "other"))
    assert np.array_equal(default, named) and not np.array_equal(default, other)
