"""JointDiffusion's objective (docs/design.md §4), the noisy-classifier modes (D4), EMA, and input validation."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL

from jointdiff.models import JointDiffusion
from jointdiff.models.ema import EMA


def tiny(**kw) -> JointDiffusion:
    args = dict(TINY_MODEL, classifier_augmentation="off")
    args.update(kw)
    return JointDiffusion(**args)


def first_batch(dm):
    return next(iter(dm.train_dataloader()))


def test_real_batch_is_in_range_with_right_shapes(fmnist):
    x, y = first_batch(fmnist)
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.99 and x.max() > 0.99
    assert y.dtype == torch.long and 0 <= y.min() and y.max() < 10


def test_loss_is_diffusion_mse_plus_lambda_cross_entropy(fmnist):
    torch.manual_seed(0)
    model = tiny(classifier_weight=0.5, dropout=0.0, head_dropout=0.0)
    x0, y = first_batch(fmnist)
    torch.manual_seed(1)
    loss = model.training_step((x0, y), 0)
    # independent recomputation with the same random draws
    torch.manual_seed(1)
    t = torch.randint(0, 50, (16,))
    noise = torch.randn_like(x0)
    ab = model.diffusion.tables64["alphas_cumprod"][t].float().view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    l_diff = ((model.network.unet(x_t, t) - noise) ** 2).mean()
    l_cls = F.cross_entropy(model.network.classify(x0, torch.zeros_like(t)), y)
    torch.testing.assert_close(loss, l_diff + 0.5 * l_cls, rtol=1e-5, atol=1e-6)


def test_lambda_zero_is_vanilla_ddpm_without_head(fmnist):
    model = tiny(classifier_weight=0.0)
    assert model.network.head is None and not model.has_head
    x0, y = first_batch(fmnist)
    torch.manual_seed(1)
    loss = model.training_step((x0, y), 0)
    torch.manual_seed(1)
    t = torch.randint(0, 50, (16,))
    noise = torch.randn_like(x0)
    torch.testing.assert_close(loss, ((model.network(model.diffusion.q_sample(x0, t, noise), t) - noise) ** 2).mean())


def test_classifier_gradients_do_not_reach_the_decoder(fmnist):
    model = tiny()
    x0, y = first_batch(fmnist)
    F.cross_entropy(model.network.classify(x0, torch.zeros(16, dtype=torch.long)), y).backward()
    unet = model.network.unet
    decoder = list(unet.output_blocks.parameters()) + list(unet.out.parameters())
    encoder = list(unet.input_blocks.parameters()) + list(unet.time_embed.parameters())
    assert all(p.grad is None for p in decoder)
    assert all(p.grad is not None for p in encoder) and any(p.grad.abs().sum() > 0 for p in encoder)


def test_noisy_classifier_modes(fmnist):
    x0, y = first_batch(fmnist)
    t = torch.randint(0, 50, (16,))
    noise = torch.randn_like(x0)
    off, replace, add = (tiny(noisy_classifier=m) for m in ("off", "replace", "add"))
    x_t = off.diffusion.q_sample(x0, t, noise)

    xc, tc, yc = off.classifier_batch(x0, x_t, t, noise, y)
    assert xc is x0 and torch.equal(tc, torch.zeros_like(t)) and yc is y

    xc, tc, yc = replace.classifier_batch(x0, x_t, t, noise, y)  # the reference: same x_i and i
    assert xc is x_t and tc is t

    xc, tc, yc = add.classifier_batch(x0, x_t, t, noise, y)
    assert xc.shape[0] == 32 and torch.equal(xc[:16], x0) and torch.equal(xc[16:], x_t)
    assert torch.equal(tc[:16], torch.zeros_like(t)) and torch.equal(tc[16:], t) and torch.equal(yc[16:], y)

    subset = tiny(noisy_classifier="replace", noisy_timesteps=[5, 40])
    xc, tc, _ = subset.classifier_batch(x0, x_t, t, noise, y)
    assert set(tc.tolist()) <= {5, 40}
    torch.testing.assert_close(xc, subset.diffusion.q_sample(x0, tc, noise))


def test_bad_arguments_are_rejected_at_construction():
    with pytest.raises(ValueError, match="noisy_timesteps"):
        tiny(noisy_classifier="replace", noisy_timesteps=[3, 50])
    with pytest.raises(ValueError, match="classifier_weight"):
        tiny(classifier_weight=-1.0)
    with pytest.raises(ValueError, match="off\\|replace\\|add"):
        tiny(noisy_classifier="sometimes")


def test_ema_update_matches_formula_with_warmup():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(net, decay=0.9)
    before = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.fill_(0.5)
    ema.num_updates = 1  # the next update is the second: k = 2
    ema.update(net)
    assert ema.num_updates == 2
    d = min(0.9, 3 / 12)
    for old, new, cur in zip(before, ema.module.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(new, d * old + (1 - d) * cur)
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)  # buffers copied
    ema.train()
    assert not ema.module.training  # the average always evaluates in eval mode


def test_training_reduces_both_losses_on_a_real_batch(fmnist):
    torch.manual_seed(0)
    model = tiny(classifier_weight=1.0, dropout=0.0, head_dropout=0.0, lr=2e-3)
    x0, y = first_batch(fmnist)
    gen_t = torch.randint(0, 50, (16,), generator=torch.Generator().manual_seed(5))
    gen_noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(6))

    def fixed_losses():
        model.eval()
        with torch.no_grad():
            ld = F.mse_loss(model.network(model.diffusion.q_sample(x0, gen_t, gen_noise), gen_t), gen_noise)
            lc = F.cross_entropy(model.network.classify(x0, torch.zeros_like(gen_t)), y)
        model.train()
        return ld.item(), lc.item()

    opt = model.configure_optimizers()
    d0, c0 = fixed_losses()
    for _ in range(40):
        opt.zero_grad()
        model.training_step((x0, y), 0).backward()
        opt.step()
    d1, c1 = fixed_losses()
    assert d1 < 0.7 * d0, (d0, d1)
    assert c1 < 0.5 * c0, (c0, c1)


def test_mismatched_datamodule_is_rejected_before_training(fmnist, tmp_path):
    model = tiny(num_classes=5)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="num_classes=5 does not match data.num_classes=10"):
        trainer.fit(model, datamodule=fmnist)
    assert trainer.global_step == 0


def test_checkpoint_of_another_noise_schedule_is_refused_and_legacy_ones_load_as_trained(tmp_path):
    from jointdiff.models.checkpoints import CLASS_KEY, load_model

    old = tiny(beta_schedule="ho_linear")
    hparams = {**dict(old.hparams), "beta_schedule": "linear"}  # how checkpoints before 2026-12-02 name it
    state = {k: v for k, v in old.state_dict().items() if k != "ema._extra_state"}  # nor did they count EMA updates
    ckpt = {CLASS_KEY: "jointdiff.models.joint.JointDiffusion", "hyper_parameters": hparams, "state_dict": state,
            "global_step": 37}
    torch.save(ckpt, tmp_path / "old.ckpt")
    loaded = load_model(tmp_path / "old.ckpt")
    assert loaded.diffusion.schedule == "ho_linear" and loaded.ema.num_updates == 37
    torch.testing.assert_close(loaded.diffusion.betas, old.diffusion.betas, rtol=0, atol=0)
    # the same checkpoint given to a model built on the (new default) reference schedule: one clear line, no load
    with pytest.raises(ValueError, match="trained with T=.* and the ho_linear β schedule but this model is built with "
                                         ".* reference_linear"):
        tiny().on_load_checkpoint(torch.load(tmp_path / "old.ckpt", weights_only=True))
    tiny(beta_schedule="ho_linear").on_load_checkpoint(torch.load(tmp_path / "old.ckpt", weights_only=True))
