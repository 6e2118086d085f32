"""PDAE (pdae.md): frozen DPM, λ_t and c_t, the zero-initialised gradient estimator, inference helpers, CLI."""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pytest
import torch
from conftest import QuadrantData, quiet_trainer
from sklearn.metrics import roc_auc_score

from jointdiff.diffusion import GaussianDiffusion
from jointdiff.diffusion.ddim import ddim_invert, ddim_sample, respaced_timesteps
from jointdiff.models import PDAE, JointDiffusion, StandaloneClassifier
from jointdiff.models.checkpoints import load_model
from jointdiff.models.pdae import pdae_loss_weight, shift_coefficient
from jointdiff.models.pdae_inference import (
    LinearProbe,
    ReconstructionSettings,
    edit_direction,
    fit_linear_probe,
    manipulate_latent,
    probe_scores,
    reconstruct,
    slerp,
)
from jointdiff.nn.layers import AttentionBlock
from jointdiff.nn.pdae import ShiftResBlock

DPM_ARGS = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_downsample=[2], num_heads=2,
                norm_groups=8, dropout=0.1, diffusion_steps=40, classifier_weight=0.0)
PDAE_ARGS = dict(z_dim=8, encoder_channels=(8, 8), encoder_heads=2, encoder_norm_groups=4)


class TinyData(QuadrantData):
    pass


@pytest.fixture(scope="module")
def dpm_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpm")
    torch.manual_seed(0)
    dpm = JointDiffusion(image_size=8, channels=1, num_classes=4, ema_decay=0.5, lr=2e-3, **DPM_ARGS)
    trainer = quiet_trainer(tmp, max_steps=4, limit_val_batches=0)
    trainer.fit(dpm, datamodule=TinyData(batch_size=16))
    trainer.save_checkpoint(tmp / "dpm.ckpt")
    return tmp / "dpm.ckpt"


def make_pdae(path, **kw) -> PDAE:
    torch.manual_seed(3)
    args = dict(image_size=8, channels=1, num_classes=4, pretrained=str(path), ema_decay=0.5, lr=1e-3, **PDAE_ARGS)
    args.update(kw)
    return PDAE(**args)


def perturb_estimator(model: PDAE, std: float = 0.05) -> None:
    """Give G's zero-initialised convolutions random weights, so that G ≠ 0."""
    torch.manual_seed(11)
    for net in (model.network, model.ema.module):
        for p in net.estimator.parameters():
            if not p.detach().abs().sum():
                torch.nn.init.normal_(p, std=std)
        net.estimator.load_state_dict(model.network.estimator.state_dict())


# λ_t and c_t ----------------------------------------------------------------------------------------------------
def test_loss_weight_and_shift_coefficient_match_float64_formulas():
    for T, scale in ((1000, 1.0), (500, 2.0)):
        betas = np.linspace(1e-4 * scale, 0.02 * scale, T)
        ab = np.cumprod(1 - betas)
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        snr = ab / (1 - ab)
        lam = (1 / (1 + snr)) ** 0.9 * (snr / (1 + snr)) ** 0.1  # paper eq. 10 as written
        sigma = betas * (1 - ab_prev) / (1 - ab)  # β̃_t
        c = np.sqrt(1 - betas) * np.sqrt(1 - ab) / betas * sigma  # pdae.md §0's second form
        d = GaussianDiffusion(T, "ho_linear")  # PDAE's schedule (pdae.md §0)
        got_lam = pdae_loss_weight(d.tables64["alphas_cumprod"], 0.1).numpy()
        got_c = shift_coefficient(d.tables64["betas"], d.tables64["alphas_cumprod"]).numpy()
        np.testing.assert_allclose(got_lam, lam, rtol=1e-12, atol=0)
        np.testing.assert_allclose(got_c, c, rtol=1e-12, atol=1e-300)
        assert got_c[0] == 0.0
    # pdae.md §4's quoted values under T = 1000: λ_0 = 2.5e-4, peak 0.722 at t = 475, λ_999 = 0.36
    lam = pdae_loss_weight(GaussianDiffusion(1000, "ho_linear").tables64["alphas_cumprod"]).numpy()
    assert lam[0] == pytest.approx(2.5e-4, rel=0.01) and int(lam.argmax()) == 475
    assert lam[475] == pytest.approx(0.722, abs=5e-4) and lam[999] == pytest.approx(0.36, abs=5e-3)


def test_module_buffers_are_the_float64_tables_rounded(dpm_ckpt):
    model = make_pdae(dpm_ckpt)
    t = model.diffusion.tables64
    assert torch.equal(model.loss_weight, pdae_loss_weight(t["alphas_cumprod"], 0.1).float())
    assert torch.equal(model.shift_coef, shift_coefficient(t["betas"], t["alphas_cumprod"]).float())
    assert model.diffusion.num_steps == 40  # the DPM's own schedule


# networks -------------------------------------------------------------------------------------------------------
def test_shift_resblock_is_the_double_adagn_of_the_reference():
    torch.manual_seed(0)
    block = ShiftResBlock(8, 12, 16, dropout=0.0, norm_groups=4)
    torch.nn.init.normal_(block.out_layers[-1].weight)
    x, e_t, e_z = torch.randn(2, 8, 5, 5), torch.randn(2, 12), torch.randn(2, 12)
    gn1, act, conv1 = block.in_layers
    h = conv1(act(gn1(x)))
    s_t, b_t = block.emb_layers(e_t)[..., None, None].chunk(2, 1)
    s_z, b_z = block.z_emb_layers(e_z)[..., None, None].chunk(2, 1)
    gn2, _, _, conv2 = block.out_layers
    h = conv2(torch.nn.functional.silu((1 + s_z) * (gn2(h) * (1 + s_t) + b_t) + b_z))
    torch.testing.assert_close(block(x, e_t, e_z), block.skip_connection(x) + h)


def test_estimator_mirrors_the_decoder_and_starts_at_zero(dpm_ckpt):
    model = make_pdae(dpm_ckpt)
    base, est = model.base, model.network.estimator
    assert len(est.output_blocks) == len(base.output_blocks)
    for mine, theirs in zip(est.output_blocks, base.output_blocks, strict=True):
        assert (mine.attn is None) == (theirs.attn is None) and (mine.up is None) == (theirs.up is None)
        assert mine.res.in_layers[2].weight.shape == theirs.res.in_layers[2].weight.shape
        assert mine.res.out_layers[2].p == theirs.res.out_layers[2].p == 0.1  # G inherits the DPM's dropout
    n_attn = lambda mods: sum(isinstance(m, AttentionBlock) for m in mods)  # noqa: E731
    assert n_attn(est.modules()) == n_attn(base.middle_block.modules()) + n_attn(base.output_blocks.modules()) > 1
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 17, 39])
    eps_theta, skips, emb = model.base_pass(x, t)
    g = est(skips, emb, model.network.encoder(x))
    assert g.shape == x.shape and torch.equal(g, torch.zeros_like(g))
    perturb_estimator(model)
    assert model.network.estimator(skips, emb, model.network.encoder(x)).abs().sum() > 0


def test_base_is_the_checkpoints_ema_unet(dpm_ckpt):
    dpm = load_model(dpm_ckpt)
    model = make_pdae(dpm_ckpt)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 30])
    with torch.no_grad():
        torch.testing.assert_close(model.base(x, t), dpm.ema.module(x, t), rtol=0, atol=0)
        assert not torch.equal(dpm.network(x, t), dpm.ema.module(x, t))
    raw = make_pdae(dpm_ckpt, base_weights="raw")
    with torch.no_grad():
        torch.testing.assert_close(raw.base(x, t), dpm.network(x, t), rtol=0, atol=0)


# training -------------------------------------------------------------------------------------------------------
def test_loss_is_the_weighted_shifted_eps_error(dpm_ckpt):
    model = make_pdae(dpm_ckpt)
    perturb_estimator(model)
    model.train()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.manual_seed(5)
    loss = model.training_step((x0, torch.zeros(4, dtype=torch.long)), 0)
    torch.manual_seed(5)
    t = torch.randint(0, 40, (4,))
    noise = torch.randn_like(x0)
    x_t = model.diffusion.q_sample(x0, t, noise)
    dpm = load_model(dpm_ckpt)
    with torch.no_grad():
        eps_theta = dpm.ema.module(x_t, t).double()  # the DPM's own forward, not PDAE's split pass
    _, skips, emb = model.base_pass(x_t, t)
    torch.manual_seed(0)  # G has dropout in train mode: compare in eval mode below instead
    model.eval()
    g = model.network.estimator(skips, emb, model.network.encoder(x0)).double()
    ab = model.diffusion.tables64["alphas_cumprod"][t]
    betas = model.diffusion.tables64["betas"][t]
    ab_prev = torch.where(t > 0, model.diffusion.tables64["alphas_cumprod"][(t - 1).clamp(min=0)], 1.0)
    snr = ab / (1 - ab)
    lam = (snr**0.1 / (1 + snr)).reshape(-1, 1, 1, 1)
    c = ((1 - betas).sqrt() * (1 - ab_prev) / (1 - ab).sqrt()).reshape(-1, 1, 1, 1)
    expected = (lam * (noise.double() - eps_theta + c * g) ** 2).mean()
    with torch.no_grad():
        torch.manual_seed(5)
        eval_loss = model.training_step((x0, torch.zeros(4, dtype=torch.long)), 0)
    torch.testing.assert_close(eval_loss.double(), expected, rtol=1e-5, atol=1e-7)
    assert loss.requires_grad and not eval_loss.requires_grad


def test_frozen_dpm_gets_no_gradient_and_stays_in_eval_mode(dpm_ckpt, tmp_path):
    model = make_pdae(dpm_ckpt)
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    modes = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            modes.append((any(m.training for m in module.base.modules()), module.network.training))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            grads = [p.grad for p in module.base.parameters()]
            modes.append(("grads", all(g is None for g in grads)))

    trainer = quiet_trainer(tmp_path, max_steps=6, max_epochs=-1, val_check_interval=3,
                            check_val_every_n_epoch=None, limit_val_batches=1, callbacks=[Spy()])
    trainer.fit(model, datamodule=TinyData(batch_size=16))
    assert modes and all(m == (False, True) or m == ("grads", True) for m in modes)
    assert all(torch.equal(before[k], v) for k, v in model.base.state_dict().items())
    assert not any(p.requires_grad for p in model.base.parameters())
    trainable = {id(p) for g in model.configure_optimizers().param_groups for p in g["params"]}
    assert trainable == {id(p) for p in model.network.parameters()}
    # one more step by hand: gradient reaches the encoder (through G) and G, never the DPM
    model.train()
    model.network.zero_grad()
    perturb_estimator(model)
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    loss, _ = model.pdae_loss(model.network, x0, torch.arange(1, 9) * 4, torch.randn_like(x0))
    loss.backward()
    assert all(p.grad is None for p in model.base.parameters())
    assert model.network.encoder.fc.weight.grad.abs().sum() > 0


def test_training_closes_part_of_the_gap(dpm_ckpt, tmp_path):
    model = make_pdae(dpm_ckpt, lr=3e-3, ema_decay=0.9)
    trainer = quiet_trainer(tmp_path, max_steps=60, max_epochs=-1, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyData(batch_size=16))
    (m,) = trainer.test(model, datamodule=TinyData(batch_size=16, eval_batch_size=32), verbose=False)
    # proven over seeds (every torch.manual_seed shifted by 1000·s, s = 0…7, 2026-12-07): test/loss 0.030–0.036
    # against a base of 0.343–0.348, a tenfold margin
    assert m["test/loss"] < m["test/loss_base"]


# inference ------------------------------------------------------------------------------------------------------
def test_zero_initialised_pdae_reconstructs_exactly_as_the_dpms_ddim(dpm_ckpt):
    model = make_pdae(dpm_ckpt).eval()
    dpm = load_model(dpm_ckpt)
    torch.manual_seed(0)
    x0 = torch.rand(5, 1, 8, 8) * 2 - 1
    steps = respaced_timesteps(40, 10)
    settings = ReconstructionSettings(inversion_steps=10, decode_steps=10, clip=False, clip_inversion=False)
    out = reconstruct(model, x0, settings)
    with torch.no_grad():
        x_T = ddim_invert(dpm.ema.module, dpm.diffusion, x0, steps)
        expected = ddim_sample(dpm.ema.module, dpm.diffusion, x_T, steps)
    assert torch.equal(out["pdae"], expected) and torch.equal(out["ddim"], expected)
    # with clamping (the default) PDAE and the bare DPM still agree bit for bit, and decoding is guided-diffusion's
    # clip_denoised DDIM
    clipped = reconstruct(model, x0, ReconstructionSettings(10, 10))
    assert torch.equal(clipped["pdae"], clipped["ddim"])
    with torch.no_grad():
        again = ddim_sample(dpm.ema.module, dpm.diffusion, clipped["x_T"], steps, clip_denoised=True)
    assert torch.equal(clipped["pdae"], again)
    # once G ≠ 0 the latent changes the result
    perturb_estimator(model)
    assert not torch.equal(reconstruct(model, x0, settings)["pdae"], expected)


def test_slerp_matches_the_formula_and_its_endpoints():
    torch.manual_seed(0)
    a, b = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    for lam in (0.0, 0.3, 1.0):
        out = slerp(a, b, lam).numpy().reshape(3, -1)
        for i in range(3):
            u, v = a[i].numpy().ravel(), b[i].numpy().ravel()
            th = np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))
            ref = (np.sin((1 - lam) * th) * u + np.sin(lam * th) * v) / np.sin(th)
            np.testing.assert_allclose(out[i], ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(slerp(a, a, 0.4), a)  # parallel codes: the linear limit


def test_linear_probe_learns_separable_latents_and_auroc_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 3
    y = torch.randint(0, 3, (2400,), generator=g)
    z = centers[y] + torch.randn(2400, 16, generator=g) + 5.0  # offset: standardisation must handle it
    probe = fit_linear_probe(z[:2000], y[:2000], z[2000:2200], y[2000:2200], 3, "multiclass", epochs=30)
    assert probe_scores(probe.logits(z[2200:]), y[2200:], "multiclass")["acc"] > 0.95
    assert 1 <= probe.best_epoch <= 30
    torch.testing.assert_close(probe.mean, z[:2000].mean(0))
    # multi-label: AUROC is sklearn's macro average
    yl = torch.stack([(y == 0), (y != 2)], dim=1).long()
    probe_ml = fit_linear_probe(z[:2000], yl[:2000], z[2000:2200], yl[2000:2200], 2, "multilabel", epochs=2)
    logits = probe_ml.logits(z[2200:])
    scores = probe_scores(logits, yl[2200:], "multilabel")
    expected = np.mean([roc_auc_score(yl[2200:, k].numpy(), logits[:, k].numpy()) for k in range(2)])
    assert scores["auroc"] == pytest.approx(expected, abs=1e-6)


def test_manipulation_moves_standardised_z_by_scale_sqrt_dz():
    probe = LinearProbe(torch.nn.Linear(8, 3), torch.arange(8.0), torch.linspace(0.5, 2, 8), 1, 0.0)
    z = torch.randn(4, 8)
    d = edit_direction(probe, 1, "multiclass")
    assert d.norm().item() == pytest.approx(1.0)
    w = probe.linear.weight.detach()
    torch.testing.assert_close(d * (w[1] - w.mean(0)).norm(), w[1] - w.mean(0))
    edited = manipulate_latent(z, probe, d, 0.3)
    step = (edited - z) / probe.std
    torch.testing.assert_close(step.norm(dim=1), torch.full((4,), 0.3 * math.sqrt(8)))
    torch.testing.assert_close(manipulate_latent(z, probe, d, 0.0), z)
    # the edit raises the target's logit relative to the others
    gap = lambda zz: probe.logits(zz)[:, 1] - probe.logits(zz).mean(1)  # noqa: E731
    assert (gap(edited) > gap(z)).all()


# checkpoints and errors -----------------------------------------------------------------------------------------
def test_wrong_dataset_or_architecture_fails_clearly(dpm_ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"trained on 8×8×1 images, but this data has 28×28×1"):
        make_pdae(dpm_ckpt, image_size=28)
    with pytest.raises(ValueError, match="pretrained"):
        make_pdae("")
    clf = StandaloneClassifier(image_size=8, channels=1, num_classes=4, model_channels=16, channel_mult=(1, 2),
                               num_res_blocks=1, attention_downsample=[], norm_groups=8)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(clf, datamodule=TinyData(batch_size=16))
    trainer.save_checkpoint(tmp_path / "clf.ckpt")
    with pytest.raises(ValueError, match="holds a StandaloneClassifier; expected one of: JointDiffusion"):
        make_pdae(tmp_path / "clf.ckpt")
    # a PDAE checkpoint whose DPM file was replaced by a DPM of another architecture
    dpm_path = tmp_path / "dpm.ckpt"
    dpm_path.write_bytes(dpm_ckpt.read_bytes())
    model = make_pdae(dpm_path)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyData(batch_size=16))
    trainer.save_checkpoint(tmp_path / "pdae.ckpt")
    reloaded = load_model(tmp_path / "pdae.ckpt", expected=PDAE)
    for (k, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    other = JointDiffusion(image_size=8, channels=1, num_classes=4, **{**DPM_ARGS, "model_channels": 24})
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(other, datamodule=TinyData(batch_size=16))
    trainer.save_checkpoint(dpm_path)
    with pytest.raises(ValueError, match="does not fit this architecture"):
        load_model(tmp_path / "pdae.ckpt", expected=PDAE)


def test_reconstruct_command_writes_metrics_and_figure(dpm_ckpt, tmp_path):
    from jointdiff.cli import main

    model = make_pdae(dpm_ckpt)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyData(batch_size=16))
    trainer.save_checkpoint(tmp_path / "pdae.ckpt")
    out = tmp_path / "rec"
    main(["reconstruct", "--checkpoint", str(tmp_path / "pdae.ckpt"), "--data", "test_pdae.TinyData",
          "--num_images", "6", "--batch_size", "4", "--inversion_steps", "5", "--decode_steps", "5",
          "--out", str(out), "--progress", "false"])
    result = json.loads((out / "reconstruction.json").read_text())
    assert (out / "reconstruction.png").stat().st_size > 0
    assert result["num_images"] == 6 and result["split"] == "test"
    # recompute on the same images: the command's numbers are these
    dm = TinyData()
    dm.setup()
    idx = torch.tensor(result["indices"])
    x0 = dm.test_set.to_float(dm.test_set.images[idx])
    loaded = load_model(tmp_path / "pdae.ckpt")
    rec = torch.cat([reconstruct(loaded, x0[i : i + 4], ReconstructionSettings(5, 5))["pdae"] for i in (0, 4)])
    mse = ((rec.add(1).div(2).clamp(0, 1) - x0.add(1).div(2).clamp(0, 1)) ** 2).flatten(1).mean(1).mean()
    assert result["pdae"]["mse"] == pytest.approx(mse.item(), rel=1e-5)
    assert set(result) >= {"pdae", "pdae_random_xT", "ddim"}
    assert all(0 <= result[k]["ssim"] <= 1 for k in ("pdae", "ddim"))


def test_interpolate_and_manipulate_commands(dpm_ckpt, tmp_path):
    from jointdiff.cli import main

    model = make_pdae(dpm_ckpt)
    perturb_estimator(model)  # a latent that matters
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyData(batch_size=16))
    trainer.save_checkpoint(tmp_path / "pdae.ckpt")
    loaded = load_model(tmp_path / "pdae.ckpt")
    dm = TinyData()
    dm.setup()
    common = ["--checkpoint", str(tmp_path / "pdae.ckpt"), "--data", "test_pdae.TinyData", "--inversion_steps", "4",
              "--decode_steps", "4", "--progress", "false"]
    main(["interpolate", *common, "--pairs", "2", "--num_lambdas", "3", "--out", str(tmp_path / "i")])
    result = json.loads((tmp_path / "i" / "interpolation.json").read_text())
    assert (tmp_path / "i" / "interpolation.png").stat().st_size > 0 and result["lambdas"] == [0.0, 0.5, 1.0]
    # the path's ends are the two images' reconstructions
    ends = torch.tensor(result["pairs"]).T.reshape(-1)
    x = dm.test_set.to_float(dm.test_set.images[ends])
    rec = reconstruct(loaded, x, ReconstructionSettings(4, 4))["pdae"]
    mse = ((rec.add(1).div(2).clamp(0, 1) - x.add(1).div(2).clamp(0, 1)) ** 2).flatten(1).mean(1).mean()
    assert result["endpoint_mse"] == pytest.approx(mse.item(), rel=1e-3, abs=1e-6)

    main(["manipulate", *common, "--target", "2", "--num_images", "3", "--probe_epochs", "2", "--probe_seeds", "2",
          "--scales", "[-0.5, 0.0, 0.5]", "--out", str(tmp_path / "m")])
    probe = json.loads((tmp_path / "m" / "probe.json").read_text())
    man = json.loads((tmp_path / "m" / "manipulation.json").read_text())
    accs = torch.tensor([r["acc"] for r in probe["runs"]])
    assert probe["test_acc"]["mean"] == pytest.approx(accs.mean().item()) and len(accs) == 2
    assert probe["train_images"] == 64 and probe["test_images"] == 32
    assert all(dm.test_set.targets[i] != 2 for i in man["indices"])  # images come from other classes
    assert set(man["target_hit_rate_of_reencoded_images"]) == {"-0.5", "0.0", "0.5"}
    assert (tmp_path / "m" / "manipulation.png").stat().st_size > 0
