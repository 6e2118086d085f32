"""The noise-aware classifier of classifier guidance (docs/design.md §5.3, D12) and its ADM half-UNet."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import QuadrantData

from jointdiff.diffusion import GaussianDiffusion
from jointdiff.diffusion.guidance import guidance_gradient
from jointdiff.models import NoiseAwareClassifier
from jointdiff.nn.encoder_unet import AttentionPool2d, DownResBlock, EncoderUNet
from jointdiff.nn.layers import AttentionBlock

TINY = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, head_channels=8, norm_groups=8)


class TinyData(QuadrantData):
    sizes = (64, 48, 48)


def test_attention_pool_matches_adm_qkv_attention_written_out():
    torch.manual_seed(0)
    pool = AttentionPool2d(spatial=3, channels=16, head_channels=4, out_dim=5)
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    pool = pool.double()
    # ADM's AttentionPool2d + QKVAttention (new order), written with einsum and its d^-1/4 scaling of q and k.
    h = x.reshape(2, 16, 9)
    h = torch.cat([h.mean(-1, keepdim=True), h], -1) + pool.positional_embedding
    qkv = pool.qkv_proj(h)
    q, k, v = qkv.chunk(3, dim=1)
    heads, d = 4, 4
    scale = 1 / math.sqrt(math.sqrt(d))
    q, k, v = (u.reshape(2 * heads, d, 10) for u in (q, k, v))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(2, 16, 10)
    expected = pool.c_proj(a)[:, :, 0]
    torch.testing.assert_close(pool(x), expected, rtol=1e-10, atol=1e-12)


def test_down_resblock_is_adm_updown_resblock():
    torch.manual_seed(0)
    block = DownResBlock(8, 12, dropout=0.0, norm_groups=4)
    torch.nn.init.normal_(block.out_layers[-1].weight)  # undo the zero init so the residual path counts
    x, emb = torch.randn(2, 8, 6, 6), torch.randn(2, 12)
    gn1, _, conv1 = block.in_layers
    h = conv1(F.avg_pool2d(F.silu(gn1(x)), 2))
    s, b = block.emb_layers(emb)[..., None, None].chunk(2, dim=1)
    gn2, _, _, conv2 = block.out_layers
    h = conv2(F.silu(gn2(h) * (1 + s) + b))
    torch.testing.assert_close(block(x, emb), F.avg_pool2d(x, 2) + h)
    assert block(x, emb).shape == (2, 8, 3, 3)


def test_encoder_unet_reference_attention_and_time_dependence():
    torch.manual_seed(0)
    net = EncoderUNet(28, 1, 10, model_channels=32, head_channels=16, norm_groups=8)
    for p in net.parameters():  # undo the zero-initialised residual outputs, which hide the time conditioning
        if not p.detach().abs().sum():
            torch.nn.init.normal_(p, std=0.05)
    seen = []
    for m in net.modules():
        if isinstance(m, AttentionBlock):
            m.register_forward_pre_hook(lambda mod, args: seen.append((args[0].shape[-1], mod.num_heads)))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        a = net(x, torch.tensor([0, 0]))
        b = net(x, torch.tensor([300, 300]))
    # "32,16,8" at 28 px → factors (0, 1, 3): attention after both 28×28 ResBlocks, none at 14 or 7, plus the middle
    assert seen == [(28, 2), (28, 2), (7, 4)] * 2  # per forward pass
    assert net.out[-1].positional_embedding.shape == (64, 7 * 7 + 1)
    assert a.shape == (2, 10) and not torch.allclose(a, b)


def tiny_model(**kw) -> NoiseAwareClassifier:
    torch.manual_seed(0)
    args = dict(image_size=8, channels=1, num_classes=4, diffusion_steps=20, lr=3e-3, **TINY)
    args.update(kw)
    return NoiseAwareClassifier(**args)


def test_training_loss_is_ce_on_noised_inputs_at_uniform_steps():
    model = tiny_model()
    x0, y = torch.rand(6, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, -1, 3, 2, 1])
    torch.manual_seed(7)
    loss = model.training_step((x0, y), 0)
    torch.manual_seed(7)
    keep = y >= 0
    t = torch.randint(0, 20, (5,))
    noise = torch.randn(5, 1, 8, 8)
    ab = model.diffusion.tables64["alphas_cumprod"][t].reshape(-1, 1, 1, 1)
    x_t = (ab.sqrt() * x0[keep].double() + (1 - ab).sqrt() * noise.double()).float()
    torch.testing.assert_close(loss, F.cross_entropy(model.network(x_t, t), y[keep]), rtol=1e-5, atol=1e-6)


def test_fit_logs_clean_noised_and_per_quarter_accuracy(tmp_path):
    model = tiny_model()
    trainer = L.Trainer(max_steps=30, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyData(batch_size=16))
    (m,) = trainer.test(model, datamodule=TinyData(batch_size=16, eval_batch_size=48), verbose=False)
    dm = TinyData()
    dm.setup()
    x0, y = dm.test_set.to_float(dm.test_set.images), dm.test_set.targets
    g = torch.Generator().manual_seed(0)  # the single test batch has index 0
    t = torch.randint(0, 20, (48,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        hits = model.network(model.diffusion.q_sample(x0, t, noise), t).argmax(1) == y
        clean = model.network(x0, torch.zeros(48, dtype=torch.long)).argmax(1) == y
    assert m["test/acc_noised"] == pytest.approx(hits.float().mean().item(), abs=1e-6)
    assert m["test/acc"] == pytest.approx(clean.float().mean().item(), abs=1e-6)
    # learnt something on the clean quadrant task. Proven over seeds (every torch.manual_seed shifted by 1000·s,
    # s = 0…7, 2026-12-07): test/acc .854 .708 .833 1.0 .708 .708 .708 1.0, at least 0.21 above the bar
    assert m["test/acc"] > 0.5
    for q in range(4):
        sel = (t * 4) // 20 == q
        assert m[f"test/acc_noised_q{q + 1}"] == pytest.approx(hits[sel].float().mean().item(), abs=1e-6)


def test_schedule_mismatch_with_the_guided_ddpm_is_refused():
    model = tiny_model()
    model.check_matches(GaussianDiffusion(20, "reference_linear"))
    with pytest.raises(ValueError, match="trained for T=20 .reference_linear schedule. but the DDPM uses T=500"):
        model.check_matches(GaussianDiffusion(500, "reference_linear"))
    with pytest.raises(ValueError, match="reference_linear schedule. but the DDPM uses T=20 .ho_linear"):
        model.check_matches(GaussianDiffusion(20, "ho_linear"))


def test_plugs_into_the_guidance_gradient():
    model = tiny_model().eval()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 5, 19]), torch.tensor([0, 2, 3])
    grad = guidance_gradient(model.network, x, t, y, "multiclass")
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.log_softmax(model.network(xr, t), 1)[torch.arange(3), y].sum(), xr)
    torch.testing.assert_close(grad, expected)
