"""PDAE's trainable networks (docs/design.md §13.1): the semantic encoder ``E_φ`` and the gradient estimator ``G_ψ``.

``G_ψ`` ("ShiftUNet") reuses the frozen pre-trained UNet's time embedding and encoder half: it consumes the same
skip list as the frozen decoder, through a structural mirror of the UNet's middle block and decoder whose
ResBlocks take a second scale-shift pair from the latent ``z`` (double AdaGN, the reference code's form
``(1+s_z)·(GN(h)·(1+s_t)+b_t)+b_z``, decision D27). The mirror is built by reading the pre-trained
:class:`~jointdiff.nn.unet.UNet`'s blocks, so ``G`` inherits whatever widths, attention placement, dropout and
GroupNorm groups the DPM was trained with. Its output convolution is zero-initialised: ``G ≡ 0`` at init.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from jointdiff.nn.layers import AttentionBlock, GroupNorm32, ResBlock, TimestepBlock, Upsample, scale_shift, zero_module
from jointdiff.nn.unet import UNet


class SemanticEncoder(nn.Module):
    """``z = E(x0)``: 3×3 convolutions (stride 2 after the first), each followed by GroupNorm + SiLU, with one
    self-attention block after the second convolution; flattened and mapped linearly to ``z_dim`` (raw: no
    normalisation of z, as the reference).

    The first convolution has stride 1 up to 32 px (docs/design.md §13.1: 28/32 px → 28/32, 14/16, 7/8, 4) and stride 2
    above (the reference CelebA-64 encoder: 64 → 32, 16, 8, 4); with the default widths the flattened size is
    128·4·4 = 2048 in all three cases.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        z_dim: int = 512,
        channels: Sequence[int] = (64, 128, 128, 128),
        num_heads: int = 4,
        norm_groups: int = 32,
    ):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"the semantic encoder needs at least two convolutions, got channels={list(channels)}")
        layers: list[nn.Module] = []
        size, ch = image_size, in_channels
        for k, out in enumerate(channels):
            stride = (1 if image_size <= 32 else 2) if k == 0 else 2
            layers.append(nn.Conv2d(ch, out, 3, stride=stride, padding=1))
            size = (size - 1) // stride + 1
            if k == 1:
                layers.append(AttentionBlock(out, num_heads, norm_groups))
            layers += [GroupNorm32(norm_groups, out), nn.SiLU()]
            ch = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(ch * size * size, z_dim)
        self.z_dim = z_dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """x0: (B, c, H, W) clean images in [-1, 1] → z: (B, z_dim)."""
        return self.fc(self.features(x0).flatten(1))


class ShiftResBlock(ResBlock):
    """ResBlock with a second, latent-driven scale-shift (the reference's ``ResBlockShift``): its own time
    projection ``(s_t, b_t) = Linear(SiLU(e_t))`` and a latent one ``(s_z, b_z) = Linear(SiLU(e_z))``, applied as
    ``(1+s_z)·(GN(h)·(1+s_t)+b_t)+b_z``."""

    def __init__(self, in_ch: int, emb_ch: int, out_ch: int, dropout: float, norm_groups: int = 32):
        super().__init__(in_ch, emb_ch, out_ch, dropout, norm_groups)
        self.z_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch))

    @classmethod
    def mirror(cls, block: ResBlock) -> ShiftResBlock:
        """A freshly initialised ShiftResBlock with ``block``'s shape, dropout and GroupNorm groups."""
        norm, _, conv = block.in_layers
        return cls(conv.in_channels, block.emb_layers[1].in_features, conv.out_channels, block.out_layers[2].p,
                   norm.num_groups)

    def forward(self, x: torch.Tensor, emb_t: torch.Tensor, emb_z: torch.Tensor) -> torch.Tensor:
        return self.skip_connection(x) + self.out_branch(self.in_layers(x), emb_t, emb_z)

    def modulate(self, h: torch.Tensor, emb_t: torch.Tensor, emb_z: torch.Tensor) -> torch.Tensor:
        """``(1+s_z)·(GN(h)·(1+s_t)+b_t)+b_z`` (D27), ``h`` already normalised."""
        s_z, b_z = scale_shift(self.z_emb_layers, emb_z, h)
        return (1 + s_z) * super().modulate(h, emb_t) + b_z


def _mirror_attention(attn: AttentionBlock | None) -> AttentionBlock | None:
    if attn is None:
        return None
    return AttentionBlock(attn.norm.num_channels, attn.num_heads, attn.norm.num_groups)


class ShiftBlock(nn.Module):
    """Mirror of one :class:`~jointdiff.nn.layers.TimestepBlock`: ShiftResBlock, optional attention (not
    conditioned on z, as the reference), optional upsampling; all newly initialised."""

    def __init__(self, block: TimestepBlock):
        super().__init__()
        self.res = ShiftResBlock.mirror(block.res)
        self.attn = _mirror_attention(block.attn)
        self.up = Upsample(block.up.conv.in_channels) if block.up is not None else None

    def forward(self, x, emb_t, emb_z, up_size: tuple[int, int] | None = None) -> torch.Tensor:
        x = self.res(x, emb_t, emb_z)
        if self.attn is not None:
            x = self.attn(x)
        if self.up is not None:
            x = self.up(x, up_size)
        return x


class GradientEstimator(nn.Module):
    """``G_ψ(x_t, z, t)``: the new middle block and decoder of PDAE's ShiftUNet, fed by the frozen UNet's skips.

    ``forward(skips, emb_t, z)`` takes what the frozen UNet computes anyway (``skips`` from ``unet.encode``,
    ``emb_t = unet.embed(t)``), so one frozen encoder pass serves both ``ε_θ`` and ``G``.
    """

    def __init__(self, unet: UNet, z_dim: int):
        super().__init__()
        if not unet.has_decoder:
            raise ValueError("PDAE needs the pre-trained UNet with its decoder (G mirrors it)")
        emb_ch = unet.time_embed[-1].out_features
        self.label_emb = nn.Linear(z_dim, emb_ch)  # e_z = Linear(z): no activation, as the reference
        self.middle_block = ShiftBlock(unet.middle_block)
        self.middle_out = ShiftResBlock.mirror(unet.middle_out)
        self.output_blocks = nn.ModuleList(ShiftBlock(b) for b in unet.output_blocks)
        norm, _, conv = unet.out
        self.out = nn.Sequential(
            GroupNorm32(norm.num_groups, norm.num_channels), nn.SiLU(),
            zero_module(nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1)),
        )

    def forward(self, skips: Sequence[torch.Tensor], emb_t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """skips: the frozen encoder's outputs (the last one is the middle block's input); emb_t: (B, 4C) time
        embedding; z: (B, z_dim) → G: (B, c, H, W)."""
        emb_z = self.label_emb(z)
        h = self.middle_out(self.middle_block(skips[-1], emb_t, emb_z), emb_t, emb_z)
        pending = list(skips)
        for block in self.output_blocks:
            h = torch.cat([h, pending.pop()], dim=1)
            up_size = tuple(pending[-1].shape[-2:]) if block.up is not None else None
            h = block(h, emb_t, emb_z, up_size)
        return self.out(h)


class PDAENetwork(nn.Module):
    """PDAE's trainable parts, the unit its optimiser and EMA cover: the semantic encoder and the gradient
    estimator."""

    def __init__(self, encoder: SemanticEncoder, estimator: GradientEstimator):
        super().__init__()
        self.encoder = encoder
        self.estimator = estimator
