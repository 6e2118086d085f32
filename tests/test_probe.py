"""The frozen-DDPM probe (docs/design.md §9, D14): the encoder never changes, never gets gradient, stays in eval
mode."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import QuadrantData, quiet_trainer

from jointdiff.data.base import ImageDataModule
from jointdiff.models import FrozenDDPMProbe, JointDiffusion, StandaloneClassifier
from jointdiff.models.checkpoints import load_model
from jointdiff.nn.heads import pooled_features

TINY = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_downsample=[], norm_groups=8)


class TinyData(QuadrantData):
    pass


@pytest.fixture(scope="module")
def ddpm_ckpt(tmp_path_factory):
    """A real checkpoint of a tiny DDPM (JointDiffusion, λ=0), trained a few steps with dropout on."""
    tmp = tmp_path_factory.mktemp("ddpm")
    torch.manual_seed(0)
    dpm = JointDiffusion(image_size=8, channels=1, num_classes=4, classifier_weight=0.0, diffusion_steps=20,
                         dropout=0.1, ema_decay=0.5, lr=1e-3, **TINY)
    trainer = quiet_trainer(tmp, max_steps=3, limit_val_batches=0)
    trainer.fit(dpm, datamodule=TinyData(batch_size=16))
    path = tmp / "ddpm.ckpt"
    trainer.save_checkpoint(path)
    return path


def make_probe(path, **kw) -> FrozenDDPMProbe:
    torch.manual_seed(1)
    args = dict(image_size=8, channels=1, num_classes=4, checkpoint=str(path), head_dropout=0.0, lr=1e-2,
                ema_decay=0.5)
    args.update(kw)
    return FrozenDDPMProbe(**args)


def test_encoder_is_the_checkpoints_ema_encoder(ddpm_ckpt):
    dpm = load_model(ddpm_ckpt)
    probe = make_probe(ddpm_ckpt)
    x, t = torch.randn(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        expected = pooled_features(*dpm.ema.module.unet.encode(x, t))
    torch.testing.assert_close(probe.features(x, t), expected, rtol=0, atol=0)
    raw = make_probe(ddpm_ckpt, encoder_weights="raw")
    with torch.no_grad():
        torch.testing.assert_close(raw.features(x, t), pooled_features(*dpm.network.unet.encode(x, t)), rtol=0, atol=0)
    assert not torch.equal(expected, raw.features(x, t))  # the EMA really differs from the raw weights


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval_mode(ddpm_ckpt):
    probe = make_probe(ddpm_ckpt, timestep=7)
    probe.train()
    assert not probe.network.unet.training and all(not m.training for m in probe.network.unet.modules())
    assert probe.network.head.training
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    probe.training_step((x, y), 0).backward()
    assert all(p.grad is None for p in probe.network.unet.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in probe.network.head.parameters())
    trainable = {id(p) for g in probe.configure_optimizers().param_groups for p in g["params"]}
    assert trainable == {id(p) for p in probe.network.head.parameters()}


def test_fit_never_changes_the_encoder_and_learns_the_head(ddpm_ckpt, tmp_path):
    probe = make_probe(ddpm_ckpt)
    before = {k: v.clone() for k, v in probe.network.unet.state_dict().items()}
    head_before = [p.clone() for p in probe.network.head.parameters()]
    seen_modes = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen_modes.append((module.network.unet.training, module.network.head.training))

    trainer = quiet_trainer(tmp_path, max_steps=12, max_epochs=-1, val_check_interval=4,
                            check_val_every_n_epoch=None, callbacks=[Spy()])
    trainer.fit(probe, datamodule=TinyData(batch_size=16))
    after = probe.network.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and buffers, bit for bit
    assert seen_modes and all(mode == (False, True) for mode in seen_modes)
    assert any(not torch.equal(a, b) for a, b in zip(head_before, probe.network.head.parameters(), strict=True))
    (metrics,) = trainer.test(probe, datamodule=TinyData(batch_size=16, eval_batch_size=16), verbose=False)
    dm = TinyData()
    dm.setup()
    x, y = dm.test_set.to_float(dm.test_set.images), dm.test_set.targets
    t = torch.zeros(len(y), dtype=torch.long)
    with torch.no_grad():
        pred = probe.ema.module.head(probe.features(x, t), t).argmax(1)
    assert metrics["test/acc"] == pytest.approx((pred == y).float().mean().item(), abs=1e-6)


def test_noised_timestep_feeds_q_sample_with_its_step(ddpm_ckpt):
    probe = make_probe(ddpm_ckpt, timestep=11)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    x, t = probe.probe_inputs(x0, noise_seed=3)
    assert t.tolist() == [11] * 4
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    ab = probe.diffusion.tables64["alphas_cumprod"][11]
    expected = ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()  # float64 closed form
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-6)
    # the training loss reads features at that step
    probe.train()
    torch.manual_seed(5)
    loss = probe.training_step((x0, torch.tensor([0, 1, 2, 3])), 0)
    torch.manual_seed(5)
    xi = probe.diffusion.q_sample(x0, t, torch.randn_like(x0))
    expected_loss = F.cross_entropy(probe.network.head(probe.features(xi, t), t), torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(loss, expected_loss)


def test_wrong_checkpoint_or_dataset_fails_clearly(ddpm_ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"trained on 8×8×1 images, but this data has 28×28×1"):
        make_probe(ddpm_ckpt, image_size=28)
    with pytest.raises(ValueError, match=r"trained on 8×8×1 images, but this data has 8×8×3"):
        make_probe(ddpm_ckpt, channels=3)
    with pytest.raises(ValueError, match="timestep must be in 0..19"):
        make_probe(ddpm_ckpt, timestep=20)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        make_probe(tmp_path / "missing.ckpt")
    # a checkpoint of another model class (no decoder, not a DPM) is refused by name
    clf = StandaloneClassifier(image_size=8, channels=1, num_classes=4, **TINY)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(clf, datamodule=TinyData(batch_size=16))
    trainer.save_checkpoint(tmp_path / "clf.ckpt")
    with pytest.raises(ValueError, match="holds a StandaloneClassifier; expected one of: JointDiffusion"):
        make_probe(tmp_path / "clf.ckpt")


def test_probe_checkpoint_reloads_with_its_frozen_weights(ddpm_ckpt, tmp_path):
    probe = make_probe(ddpm_ckpt)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(probe, datamodule=TinyData(batch_size=16))
    trainer.save_checkpoint(tmp_path / "probe.ckpt")
    loaded = load_model(tmp_path / "probe.ckpt", expected=FrozenDDPMProbe)
    for (k, a), b in zip(probe.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not loaded.network.unet.training


def test_cli_builds_the_probe_with_the_dpms_own_hyperparameters(ddpm_ckpt):
    """Under LightningCLI, a module built inside another's __init__ must still record its own arguments."""
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        L.LightningModule, ImageDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
        args=["--model", "FrozenDDPMProbe", "--model.checkpoint", str(ddpm_ckpt), "--model.image_size", "8",
              "--model.num_classes", "4", "--model.timestep", "5", "--data", "test_probe.TinyData"],
    )
    assert isinstance(cli.model, FrozenDDPMProbe)
    assert cli.model.diffusion.num_steps == 20 and cli.model.hparams.timestep == 5
