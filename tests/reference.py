"""The authors' implementation of the parts this package computes differently, kept as an executable baseline.

Used by tests (our fused paths must compute the same numbers) and by ``experiments/bench/bench_*.py`` (speed ratios
against the reference at the identical architecture). Nothing here is used in training.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from jointdiff.nn.layers import AttentionBlock


def legacy_qkv_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """guided-diffusion's ``QKVAttentionLegacy``: qkv (B, 3·H·d, N) → (B, H·d, N), explicit (B·H, N, N) weights."""
    bs, width, length = qkv.shape
    ch = width // (3 * num_heads)
    q, k, v = qkv.reshape(bs * num_heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / ch**0.25
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    # The reference upcasts the softmax to float32 (a no-op for fp32; float64 is kept so checks can run in it).
    upcast = weight.float() if weight.dtype in (torch.float16, torch.bfloat16) else weight
    weight = torch.softmax(upcast, dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


def legacy_attention_forward(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """``AttentionBlock.forward`` as the reference computes it."""
    b, c, *spatial = x.shape
    x_flat = x.reshape(b, c, -1)
    h = legacy_qkv_attention(block.qkv(block.norm(x_flat)), block.num_heads)
    return (x_flat + block.proj_out(h)).reshape(b, c, *spatial)


def use_legacy_attention(module: nn.Module) -> nn.Module:
    """Switch every :class:`AttentionBlock` in ``module`` to the reference computation (in place)."""
    for m in module.modules():
        if isinstance(m, AttentionBlock):
            m.forward = legacy_attention_forward.__get__(m)
    return module


@torch.no_grad()
def reference_ema_update(target: Iterable[torch.Tensor], source: Iterable[torch.Tensor], rate: float) -> None:
    """guided-diffusion's ``update_ema``: one Python-level op pair per parameter."""
    for targ, src in zip(target, source, strict=True):
        targ.detach().mul_(rate).add_(src, alpha=1 - rate)
