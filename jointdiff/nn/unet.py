"""The ADM UNet of docs/design.md §2.1, split into an encoder and a decoder for the joint model (§2.2).

``encode(x, t)`` returns the middle-block output ``m`` and the skip tensors ``e_1…e_K`` (every encoder module's
output: the stem, each ResBlock with its attention, each Downsample), exactly what ``decode`` consumes.
``decode(encode(x, t), t) == forward(x, t)`` holds bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from jointdiff.nn.layers import (
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    TimestepBlock,
    Upsample,
    timestep_embedding,
    zero_module,
)

# Reference ``create_model`` channel multipliers, keyed by image size (docs/design.md §2.1).
CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
    28: (1, 2, 2),
}


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """The reference's ``channel_mult`` for ``image_size`` (shared by the UNet and the noise-aware classifier)."""
    if image_size not in CHANNEL_MULT:
        raise ValueError(f"no default channel_mult for image_size={image_size}; pass channel_mult")
    return CHANNEL_MULT[image_size]


def reference_attention_downsample(image_size: int, resolutions: Sequence[int] = (16, 8)) -> tuple[int, ...]:
    """The reference turns ``attention_resolutions="16,8"`` into downsample factors ``H // r``.

    At 28 px this gives (1, 3): attention at full 28×28 resolution, and a factor 3 that never occurs.
    """
    return tuple(image_size // r for r in resolutions)


class UNet(nn.Module):
    """ADM UNet, ε-prediction, unconditional (no label embedding: ``class_cond`` has no effect in the reference).

    Args:
        image_size: input height = width.
        in_channels: image channels (1 or 3).
        model_channels: base width ``C``.
        channel_mult: per-level width multipliers; ``None`` takes the reference table for ``image_size``.
        num_res_blocks: ResBlocks per encoder level (the decoder has one more).
        attention_downsample: downsample factors (1 = full resolution) at which encoder/decoder blocks attend;
            ``None`` reproduces the reference's ``attention_resolutions="16,8"``. The middle always attends.
        num_heads: attention heads.
        dropout: dropout inside the ResBlocks.
        norm_groups: GroupNorm groups (32 in the reference; smaller only for tiny test models).
        decoder: ``False`` builds only the time embedding, encoder and middle block (``encode``), for the
            encoder-only stand-alone classifier and probe (D13: "decoder omitted"); ``decode`` then raises.
    """

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        model_channels: int = 64,
        channel_mult: Sequence[float] | None = None,
        num_res_blocks: int = 3,
        attention_downsample: Sequence[int] | None = None,
        num_heads: int = 4,
        dropout: float = 0.3,
        norm_groups: int = 32,
        decoder: bool = True,
    ):
        super().__init__()
        if channel_mult is None:
            channel_mult = default_channel_mult(image_size)
        if attention_downsample is None:
            attention_downsample = reference_attention_downsample(image_size)
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        attention_downsample = set(attention_downsample)
        emb_ch = 4 * model_channels

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)
        )

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, emb_ch, o, dropout, norm_groups)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, num_heads, norm_groups)

        ch = int(channel_mult[0] * model_channels)
        self.stem = nn.Conv2d(in_channels, ch, 3, padding=1)
        skip_chans = [ch]
        self.input_blocks = nn.ModuleList()
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = int(mult * model_channels)
                self.input_blocks.append(TimestepBlock(res(ch, out), attn(out) if ds in attention_downsample else None))
                ch = out
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Downsample(ch))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepBlock(res(ch, ch), attn(ch))
        self.middle_out = res(ch, ch)
        middle_ch = ch

        self.has_decoder = decoder
        if decoder:
            self.output_blocks = nn.ModuleList()
            pending = list(skip_chans)
            for level, mult in reversed(list(enumerate(channel_mult))):
                for i in range(num_res_blocks + 1):
                    out = int(mult * model_channels)
                    block_in = ch + pending.pop()
                    up = None
                    if level and i == num_res_blocks:
                        up = Upsample(out)
                    self.output_blocks.append(
                        TimestepBlock(res(block_in, out), attn(out) if ds in attention_downsample else None, up)
                    )
                    ch = out
                    if up is not None:
                        ds //= 2

            self.out = nn.Sequential(
                GroupNorm32(norm_groups, ch), nn.SiLU(), zero_module(nn.Conv2d(ch, in_channels, 3, padding=1))
            )
        # Channels of the tensors ``encode`` returns: m first, then the skips in creation order.
        self.tap_channels: tuple[int, ...] = (middle_ch, *skip_chans)

    @property
    def feature_dim(self) -> int:
        """Size ``F`` of the pooled representation ``z`` (docs/design.md §2.2), summed from the tap shapes."""
        return sum(self.tap_channels)

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) step indices → (B, 4C) time embedding, in the dtype of the embedding MLP."""
        emb = timestep_embedding(t, self.model_channels)
        return self.time_embed(emb.to(self.time_embed[0].weight.dtype))

    def encode(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder and middle block. x: (B, c, H, W), t: (B,) step indices → (m, [e_1…e_K])."""
        emb = self.embed(t)
        h = self.stem(x)
        skips = [h]
        for block in self.input_blocks:
            h = block(h, emb) if isinstance(block, TimestepBlock) else block(h)
            skips.append(h)
        h = self.middle_out(self.middle_block(h, emb), emb)
        return h, skips

    def decode(self, middle: torch.Tensor, skips: Sequence[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        """Decoder and output head: consumes the skips last-in first-out. Returns ε̂ with the input's shape."""
        if not self.has_decoder:
            raise RuntimeError("this UNet was built without its decoder (decoder=False): it can only encode")
        emb = self.embed(t)
        pending = list(skips)
        h = middle
        for block in self.output_blocks:
            h = torch.cat([h, pending.pop()], dim=1)
            up_size = tuple(pending[-1].shape[-2:]) if block.up is not None else None
            h = block(h, emb, up_size)
        return self.out(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        middle, skips = self.encode(x, t)
        return self.decode(middle, skips, t)
