"""Building blocks of the ADM ("guided-diffusion") UNet, docs/design.md §2.1.

Each block keeps the reference's parameter shapes, initialisation (zero-initialised output convolutions)
and legacy attention head split, so parameter counts match the reference's and the function computed is the
reference's. Module *names* differ from the reference (no index-based ``TimestepEmbedSequential``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (the reference zero-initialises residual outputs)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in at least float32, as the reference's ``GroupNorm32`` (keeps bf16/fp16 runs stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).type(x.dtype)
        return super().forward(x)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer step indices, layout ``[cos | sin]`` (docs/design.md §2.1).

    timesteps: (B,) raw step indices (not rescaled). Returns (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    """GN → SiLU → conv, FiLM scale-shift from the time embedding, GN → SiLU → dropout → zero conv, + skip."""

    def __init__(self, in_ch: int, emb_ch: int, out_ch: int, dropout: float, norm_groups: int = 32):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(norm_groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch))
        self.out_layers = nn.Sequential(
            GroupNorm32(norm_groups, out_ch),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.skip_connection(x) + self.out_branch(self.in_layers(x), emb)

    def out_branch(self, h: torch.Tensor, *embs: torch.Tensor) -> torch.Tensor:
        """GN(h), modulated by :meth:`modulate` from the embeddings, then SiLU → dropout → zero conv. The one body
        of every ResBlock variant (down-sampling, PDAE's latent shift)."""
        out_norm, *out_rest = self.out_layers
        h = self.modulate(out_norm(h), *embs)
        for layer in out_rest:
            h = layer(h)
        return h

    def modulate(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """ADM's scale-shift: ``h·(1+s) + b`` with ``(s, b) = Linear(SiLU(emb))``."""
        scale, shift = scale_shift(self.emb_layers, emb, h)
        return h * (1 + scale) + shift


def scale_shift(layers: nn.Module, emb: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``layers(emb)`` split into a (B, C, 1, 1) scale and shift in ``like``'s dtype."""
    scale, shift = layers(emb).type(like.dtype)[..., None, None].chunk(2, dim=1)
    return scale, shift


class AttentionBlock(nn.Module):
    """Spatial self-attention with the reference's *legacy* head split (``QKVAttentionLegacy``).

    The 1×1 qkv projection yields ``3·C`` channels laid out per head as ``[q_h | k_h | v_h]``. The reference
    scales q and k each by ``d^-1/4``; their product is SDPA's default ``1/sqrt(d)``, so
    ``scaled_dot_product_attention`` computes the same function with a fused kernel (tested against an
    explicit einsum of the reference in ``tests/test_nn.py``).
    """

    def __init__(self, channels: int, num_heads: int = 4, norm_groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = GroupNorm32(norm_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x_flat = x.reshape(b, c, -1)  # (B, C, N) with N = H·W tokens
        qkv = self.qkv(self.norm(x_flat))  # (B, 3C, N)
        # the reference's legacy layout: channels are (heads, q|k|v, d). The copy into (3, B, heads, N, d) is what
        # makes the fused kernels eligible: they need stride 1 on d, and a transposed view falls back to the math
        # kernel (slower than the reference's einsum; tests/test_nn.py checks the fused path is taken).
        qkv = rearrange(qkv, "b (heads qkv d) n -> qkv b heads n d", heads=self.num_heads, qkv=3).contiguous()
        h = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, d)
        h = rearrange(h, "b heads n d -> b (heads d) n")
        return (x_flat + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """Strided 3×3 convolution (``resblock_updown=False``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 followed by a 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        # ``size`` lets odd resolutions (e.g. 7 → 14 → 28 is fine, but 25 → 13 → 26 is not) match the skip.
        x = F.interpolate(x, size=size, mode="nearest") if size else F.interpolate(x, scale_factor=2.0)
        return self.conv(x)


class TimestepBlock(nn.Module):
    """A ResBlock optionally followed by attention: one entry of the reference's ``TimestepEmbedSequential``."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None = None, up: Upsample | None = None):
        super().__init__()
        self.res = res
        self.attn = attn
        self.up = up

    def forward(self, x: torch.Tensor, emb: torch.Tensor, up_size: tuple[int, int] | None = None) -> torch.Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.up is not None:
            x = self.up(x, up_size)
        return x
