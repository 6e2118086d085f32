"""The ADM half-UNet classifier (guided-diffusion's ``EncoderUNetModel``, ``pool="attention"``),
docs/design.md §5.3 / D12.

The noise-aware classifier ``p(y | x_i, i)`` of Dhariwal & Nichol's classifier guidance: the UNet encoder and
middle block (time-conditioned ResBlocks with scale-shift norm, ResBlock downsampling: ``resblock_updown=True``),
then GroupNorm → SiLU → CLIP-style attention pooling to logits. Built from this package's UNet blocks; the two
pieces the joint UNet lacks (the downsampling ResBlock and the attention pool) are written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from jointdiff.nn.layers import AttentionBlock, GroupNorm32, ResBlock, TimestepBlock, timestep_embedding
from jointdiff.nn.unet import default_channel_mult


class DownResBlock(ResBlock):
    """ADM ``ResBlock(down=True)``: the 2×2 average pool sits between the input norm/SiLU and the first conv, and on
    the skip path (``h = conv(pool(SiLU(GN(x))))``, ``skip = pool(x)``); the rest is the scale-shift ResBlock."""

    def __init__(self, channels: int, emb_ch: int, dropout: float, norm_groups: int = 32):
        super().__init__(channels, emb_ch, channels, dropout, norm_groups)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, act, conv = self.in_layers
        h = conv(F.avg_pool2d(act(norm(x)), 2))
        return F.avg_pool2d(x, 2) + self.out_branch(h, emb)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling (ADM's ``AttentionPool2d``): a mean token is prepended to the flattened grid,
    a learned positional embedding added, one multi-head attention layer (the *new* q|k|v channel order, ADM's
    ``QKVAttention``) run, and the mean token's output projected to ``out_dim``."""

    def __init__(self, spatial: int, channels: int, head_channels: int, out_dim: int):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"attention pool channels {channels} not divisible by head_channels {head_channels}")
        self.num_heads = channels // head_channels
        self.positional_embedding = nn.Parameter(torch.randn(channels, spatial**2 + 1) / channels**0.5)
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)  # (B, C, N)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding.to(x.dtype)
        q, k, v = self.qkv_proj(x).chunk(3, dim=1)  # each (B, C, N+1), heads contiguous in C
        q, k, v = (rearrange(u, "b (heads d) n -> b heads n d", heads=self.num_heads) for u in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N+1, d)
        h = rearrange(h, "b heads n d -> b (heads d) n")
        return self.c_proj(h)[:, :, 0]


class EncoderUNet(nn.Module):
    """Time-conditioned half-UNet classifier, ``forward(x_t, t) -> logits`` (B, num_outputs).

    Args:
        image_size, in_channels: input shape.
        num_outputs: logits (classes or attributes).
        model_channels: base width (128 in ADM's ``classifier_defaults``).
        channel_mult: per-level multipliers; ``None`` takes the UNet's table for ``image_size``.
        num_res_blocks: ResBlocks per level (2 in ADM).
        attention_downsample: downsample factors with attention after each ResBlock; ``None`` is ADM's
            ``classifier_attention_resolutions="32,16,8"`` turned into factors ``H // r`` (at 28 px only 1 occurs).
        head_channels: channels per attention head (64 in ADM); the number of heads is ``channels // head_channels``.
        dropout: inside the ResBlocks (0 in ADM).
        norm_groups: GroupNorm groups (32; smaller only for tiny test models).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        num_outputs: int,
        model_channels: int = 128,
        channel_mult: Sequence[float] | None = None,
        num_res_blocks: int = 2,
        attention_downsample: Sequence[int] | None = None,
        head_channels: int = 64,
        dropout: float = 0.0,
        norm_groups: int = 32,
    ):
        super().__init__()
        if channel_mult is None:
            channel_mult = default_channel_mult(image_size)
        if attention_downsample is None:
            attention_downsample = tuple(image_size // r for r in (32, 16, 8))
        attention_downsample = set(attention_downsample)
        self.model_channels = model_channels
        emb_ch = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        def attn(c: int) -> AttentionBlock:
            if c % head_channels:
                raise ValueError(f"attention channels {c} not divisible by head_channels {head_channels}")
            return AttentionBlock(c, c // head_channels, norm_groups)

        ch = int(channel_mult[0] * model_channels)
        self.stem = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.input_blocks = nn.ModuleList()
        ds, size = 1, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = int(mult * model_channels)
                res = ResBlock(ch, emb_ch, out, dropout, norm_groups)
                self.input_blocks.append(TimestepBlock(res, attn(out) if ds in attention_downsample else None))
                ch = out
            if level != len(channel_mult) - 1:
                self.input_blocks.append(DownResBlock(ch, emb_ch, dropout, norm_groups))
                ds, size = ds * 2, size // 2
        self.middle_block = TimestepBlock(ResBlock(ch, emb_ch, ch, dropout, norm_groups), attn(ch))
        self.middle_out = ResBlock(ch, emb_ch, ch, dropout, norm_groups)
        self.out = nn.Sequential(
            GroupNorm32(norm_groups, ch), nn.SiLU(), AttentionPool2d(size, ch, head_channels, num_outputs)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, c, H, W) noised images; t: (B,) step indices → (B, num_outputs) logits."""
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        h = self.stem(x)
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_out(self.middle_block(h, emb), emb)
        return self.out(h)
