"""Counterfactuals (docs/design.md §6): noise fraction 0 returns the image, the noising/denoising schedule,
the command."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_checkpoint
from torchvision.io import write_png

from jointdiff.cli import main as cli_main
from jointdiff.data.base import ImageDataModule, ImageTensorDataset, Splits
from jointdiff.diffusion import GaussianDiffusion
from jointdiff.diffusion.conditional import counterfactual, joint_conditional_denoise, noise_steps
from jointdiff.nn.joint import JointNetwork
from jointdiff.nn.unet import UNet
from jointdiff.sampling.counterfactual import run_counterfactual


def tiny_joint() -> JointNetwork:
    torch.manual_seed(0)
    net = JointNetwork(UNet(8, 1, 16, (1, 2), 1, [], 2, 0.0, 8), 2, head_dropout=0.5)
    torch.nn.init.normal_(net.unet.out[-1].weight, std=0.05)
    return net.eval()


def test_noise_fraction_zero_returns_the_image_and_bad_fractions_fail():
    net, diffusion = tiny_joint(), GaussianDiffusion(40)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    y = torch.tensor([1, 0, 1])
    noised, cf = counterfactual(net, diffusion, x0, y, 200.0, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noised, x0) and torch.equal(cf, x0)
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"noise fraction must be in \[0, 1\]"):
            counterfactual(net, diffusion, x0, y, 200.0, bad)
    with pytest.raises(ValueError, match="unknown class 2"):  # checked even when nothing is denoised
        counterfactual(net, diffusion, x0, torch.tensor([2, 0, 1]), 200.0, 0.0)
    with pytest.raises(ValueError, match="alpha must be"):
        counterfactual(net, diffusion, x0, y, -5.0, 0.0)


def test_counterfactual_noises_to_step_n_minus_1_and_denoises_n_steps():
    net, diffusion = tiny_joint(), GaussianDiffusion(40)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    y = torch.tensor([1, 0])
    assert noise_steps(0.2, 40) == 8 and noise_steps(1.0, 40) == 40 and noise_steps(0.0, 40) == 0
    seen = []
    noised, cf = counterfactual(net, diffusion, x0, y, 50.0, 0.2, generator=torch.Generator().manual_seed(1),
                                on_step=lambda i, logits: seen.append(i))
    assert seen == list(range(7, -1, -1))
    # independent recomputation: forward noise first from the generator, then the sampler from step 7
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(x0.shape, generator=g)
    ab = diffusion.tables64["alphas_cumprod"][7].item()
    torch.testing.assert_close(noised, ab**0.5 * x0 + (1 - ab) ** 0.5 * eps)
    torch.testing.assert_close(cf, joint_conditional_denoise(net, diffusion, noised, 7, y, 50.0, generator=g))
    assert not torch.allclose(cf, x0)


class TinyBinaryData(ImageDataModule):
    """Eight random 8×8 gray images, labels 0,1,0,1,… (a DataModule as the project's, without files)."""

    name, image_size, channels, num_classes = "tiny", 8, 1, 2

    def load_splits(self) -> Splits:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (8, 1, 8, 8), generator=g, dtype=torch.uint8)
        ds = ImageTensorDataset(images, torch.arange(8) % 2)
        return Splits(ds, ds, ds)


def test_command_on_dataset_images_defaults_to_the_other_class(tmp_path):
    ckpt = tmp_path / "binary.ckpt"
    write_checkpoint(ckpt, num_classes=2)
    record = run_counterfactual(str(ckpt), output=str(tmp_path / "cf"), data=TinyBinaryData(), split="test",
                                indices=[0, 1, 2], noise_fraction=0.3, alpha=10.0, progress=False,
                                class_names=["Uninfected", "Parasitized"])
    assert [im["label"] for im in record["images"]] == [0, 1, 0]
    assert [im["target"] for im in record["images"]] == [1, 0, 1]
    assert record["reverse_steps"] == 9 and (tmp_path / "cf" / "counterfactual.png").is_file()
    saved = json.loads((tmp_path / "cf" / "counterfactual.json").read_text())
    assert saved["images"][1]["request"] == "Uninfected"
    for im in saved["images"]:
        assert abs(sum(im["probs_after"]) - 1) < 1e-5
        assert im["p_request_after"] == pytest.approx(im["probs_after"][im["target"]])
    with pytest.raises(ValueError, match="outside the test split"):
        run_counterfactual(str(ckpt), output=str(tmp_path / "x"), data=TinyBinaryData(), indices=[8])


def test_command_on_files_at_noise_zero_returns_the_images(tmp_path):
    ckpt = tmp_path / "three.ckpt"
    write_checkpoint(ckpt)  # 3 classes
    files = []
    for k in range(2):
        path = tmp_path / f"img{k}.png"
        write_png(torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8), str(path))  # resized to 8
        files.append(str(path))
    out = tmp_path / "cf0"
    cli_main(["counterfactual", "--checkpoint", str(ckpt), "--files", json.dumps(files), "--target", "2",
              "--noise_fraction", "0", "--output", str(out), "--progress", "false"])
    record = json.loads((out / "counterfactual.json").read_text())
    assert record["reverse_steps"] == 0
    for im in record["images"]:
        assert im["mean_abs_difference"] == 0.0 and im["probs_before"] == im["probs_after"] and im["target"] == 2
    with pytest.raises(ValueError, match="--target is required"):  # 3 classes: no single "other" class
        run_counterfactual(str(ckpt), output=str(out), files=files)
    with pytest.raises(ValueError, match=r"noise fraction must be in \[0, 1\]"):
        run_counterfactual(str(ckpt), output=str(out), files=files, target=1, noise_fraction=1.5)
    with pytest.raises(FileNotFoundError, match="image file not found"):
        run_counterfactual(str(ckpt), output=str(out), files=[str(tmp_path / "nope.png")], target=1)


class TinyAttributeData(ImageDataModule):
    """Six random 8×8 gray images with 3 binary attributes."""

    name, image_size, channels, num_classes, task = "tiny-attributes", 8, 1, 3, "multilabel"

    def load_splits(self) -> Splits:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (6, 1, 8, 8), generator=g, dtype=torch.uint8)
        ds = ImageTensorDataset(images, torch.randint(0, 2, (6, 3), generator=g))
        return Splits(ds, ds, ds)


def test_multilabel_counterfactual_flips_one_attribute_and_keeps_the_others(tmp_path):
    ckpt = tmp_path / "attributes.ckpt"
    write_checkpoint(ckpt, task="multilabel")
    data = TinyAttributeData()
    record = run_counterfactual(str(ckpt), output=str(tmp_path / "cf"), data=data, indices=[0, 1, 2],
                                flip_attribute=1, noise_fraction=0.2, alpha=5.0, progress=False)
    for im in record["images"]:
        expected = list(im["label"])
        expected[1] = 1 - expected[1]
        assert im["target"] == expected
        p = im["probs_after"][1]
        assert im["p_request_after"] == pytest.approx(p if expected[1] else 1 - p)
    with pytest.raises(ValueError, match="--flip_attribute K"):
        run_counterfactual(str(ckpt), output=str(tmp_path / "x"), data=TinyAttributeData(), indices=[0])
    with pytest.raises(ValueError, match="flip_attribute must be in 0..2"):
        run_counterfactual(str(ckpt), output=str(tmp_path / "x"), data=TinyAttributeData(), indices=[0],
                           flip_attribute=3)
