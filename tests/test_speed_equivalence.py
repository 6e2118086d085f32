"""Every speed optimisation leaves the numbers unchanged (issue 8): fused attention vs the reference's explicit
attention, ``_foreach`` EMA vs the reference's per-parameter loop, channels-last, bf16 autocast, torch.compile."""

import copy

import pytest
import torch
from conftest import TINY_MODEL

from jointdiff.models import JointDiffusion
from jointdiff.models.ema import EMA
from jointdiff.nn.reference import reference_ema_update, use_legacy_attention
from jointdiff.nn.unet import UNet


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (zero-initialised outputs would hide differences)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def test_sdpa_unet_matches_legacy_attention_unet_outputs_and_gradients():
    torch.manual_seed(0)
    fused = randomised(UNet(16, 1, 32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample=[1, 2], dropout=0.0)).double()
    legacy = use_legacy_attention(copy.deepcopy(fused))
    x, t = torch.randn(3, 1, 16, 16, dtype=torch.float64), torch.tensor([0, 10, 99])
    out_f, out_l = fused(x, t), legacy(x, t)
    torch.testing.assert_close(out_f, out_l, rtol=1e-10, atol=1e-10)
    out_f.square().sum().backward()
    out_l.square().sum().backward()
    for (name, a), b in zip(fused.named_parameters(), legacy.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_foreach_ema_equals_reference_per_parameter_loop():
    net = randomised(UNet(16, 1, 16, channel_mult=(1, 2), num_res_blocks=1, attention_downsample=[], norm_groups=8))
    ema = EMA(net, decay=0.99, warmup=False)
    reference = [p.detach().clone() for p in net.parameters()]
    for step in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ema.update(net, step)
        reference_ema_update(reference, net.parameters(), 0.99)
    for a, b in zip(ema.module.parameters(), reference):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
