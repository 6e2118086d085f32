"""Every speed optimisation leaves the numbers unchanged: fused attention vs the reference's explicit
attention, ``_foreach`` EMA vs the reference's per-parameter loop, channels-last, bf16 autocast, torch.compile."""

import copy

import torch
from conftest import TINY_MODEL, randomised
from reference import reference_ema_update, use_legacy_attention

from jointdiff.models import JointDiffusion
from jointdiff.models.ema import EMA
from jointdiff.nn.unet import UNet


def test_sdpa_unet_matches_legacy_attention_unet_outputs_and_gradients():
    torch.manual_seed(0)
    unet = UNet(16, 1, 32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample=[1, 2], dropout=0.0)
    fused = randomised(unet).double()
    legacy = use_legacy_attention(copy.deepcopy(fused))
    x, t = torch.randn(3, 1, 16, 16, dtype=torch.float64), torch.tensor([0, 10, 99])
    out_f, out_l = fused(x, t), legacy(x, t)
    torch.testing.assert_close(out_f, out_l, rtol=1e-10, atol=1e-10)
    out_f.square().sum().backward()
    out_l.square().sum().backward()
    for (name, a), b in zip(fused.named_parameters(), legacy.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_foreach_ema_equals_reference_per_parameter_loop():
    net = randomised(UNet(16, 1, 16, channel_mult=(1, 2), num_res_blocks=1, attention_downsample=[], norm_groups=8))
    ema = EMA(net, decay=0.99)
    ema.num_updates = 10_000  # past the warm-up ((1+k)/(10+k) ≥ 0.99 from k = 890): the reference's constant decay
    assert ema.decay_at(ema.num_updates + 1) == 0.99
    reference = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ema.update(net)
        reference_ema_update(reference, net.parameters(), 0.99)
    for a, b in zip(ema.module.parameters(), reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _loss_and_grads(model: JointDiffusion, batch, seed: int = 0, autocast: bool = False):
    model.log = lambda *a, **k: None
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model.training_step(batch, 0)
    loss.backward()
    return loss.detach().float(), [p.grad.clone() for p in model.network.parameters()]


# Smallest model with every block kind (ResBlock, attention, down/upsampling, head): 12 px, two levels.
SMALL = {**TINY_MODEL, "image_size": 12, "channel_mult": (1, 2), "attention_downsample": [2], "dropout": 0.0,
         "head_dropout": 0.0, "classifier_augmentation": "off"}


def _tiny_pair(**options):
    torch.manual_seed(0)
    plain = JointDiffusion(**SMALL)
    randomised(plain.network)
    fast = JointDiffusion(**SMALL, **options)
    fast.load_state_dict(plain.state_dict())
    fast.configure_model()
    g = torch.Generator().manual_seed(1)
    batch = (torch.rand(4, 1, 12, 12, generator=g) * 2 - 1, torch.randint(0, 10, (4,), generator=g))
    return plain, fast, batch


def test_channels_last_gives_the_same_loss_and_gradients():
    plain, fast, batch = _tiny_pair(channels_last=True)
    assert fast.network.unet.stem.weight.is_contiguous(memory_format=torch.channels_last)
    loss_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, grads_b = _loss_and_grads(fast, batch)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_bf16_autocast_stays_close_to_fp32():
    plain, _, batch = _tiny_pair()
    loss_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, grads_b = _loss_and_grads(plain, batch, autocast=True)
    torch.testing.assert_close(loss_a, loss_b, rtol=3e-2, atol=1e-3)
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grads_a]),
                                                torch.cat([g.flatten() for g in grads_b]), dim=0)
    assert cos > 0.99, cos


def test_compiled_model_gives_the_same_loss_and_gradients():
    plain, fast, batch = _tiny_pair(compile=True)
    loss_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, grads_b = _loss_and_grads(fast, batch)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert set(plain.state_dict()) == set(fast.state_dict())  # checkpoints unaffected by compilation


def test_fused_adamw_is_only_requested_on_cuda():
    plain, _, _ = _tiny_pair()
    assert plain.configure_optimizers().defaults["fused"] is None
