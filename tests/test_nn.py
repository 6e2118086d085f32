"""Networks against numbers measured on the authors' model (docs/design.md §2) and the reference attention layout."""

import pytest
import torch
from reference import legacy_qkv_attention

from jointdiff.nn import JointNetwork, PooledFeatureHead, UNet, pooled_features
from jointdiff.nn.layers import AttentionBlock, timestep_embedding
from jointdiff.nn.unet import reference_attention_downsample


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# (image_size, channels, C, classes, UNet params, head params, F, skips) — measured on the reference.
SPEC_13 = [
    (28, 1, 64, 10, 8_799_105, 915_276, 1344, 12),
    (32, 3, 128, 10, 52_542_979, 6_922_892, 3712, 16),
    (32, 3, 128, 100, 52_542_979, 7_090_022, 3712, 16),
    (64, 3, 128, 40, 121_060_483, 13_896_746, 5248, 16),
    (32, 1, 64, 10, 13_157_889, 1_739_084, 1856, 16),
]


@pytest.mark.parametrize("size,ch,width,classes,unet_params,head_params,feat,skips", SPEC_13)
def test_parameter_counts_and_feature_sizes_match_reference(
    size, ch, width, classes, unet_params, head_params, feat, skips
):
    with torch.device("meta"):  # shapes only: the 121M-parameter model costs nothing
        unet = UNet(size, ch, width)
        head = PooledFeatureHead(unet.feature_dim, classes)
    assert n_params(unet) == unet_params
    assert n_params(head) == head_params
    assert unet.feature_dim == feat
    assert len(unet.tap_channels) == skips + 1
    assert head.layers[2].out_features == feat // 2  # hidden width 672 / 1856 / 2624


def test_reference_attention_resolutions_at_28px_mean_full_resolution():
    assert reference_attention_downsample(28) == (1, 3)
    assert reference_attention_downsample(32) == (2, 4)
    assert reference_attention_downsample(64) == (4, 8)


@pytest.mark.parametrize(
    "size,width,expected",
    [(28, 64, {28: 7, 7: 1}), (32, 128, {16: 7, 8: 7, 4: 1}), (64, 128, {16: 7, 8: 8})],
)
def test_attention_block_count_by_resolution(size, width, expected):
    unet = UNet(size, 1, width, dropout=0.0)
    seen: dict[int, int] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, args: seen.__setitem__(args[0].shape[-1], seen.get(args[0].shape[-1], 0) + 1)
        )
        for m in unet.modules()
        if isinstance(m, AttentionBlock)
    ]
    with torch.no_grad():
        unet(torch.zeros(1, 1, size, size), torch.zeros(1, dtype=torch.long))
    for h in hooks:
        h.remove()
    assert seen == expected


def test_tap_shapes_at_32px_match_spec():
    unet = UNet(32, 3, 128, dropout=0.0).eval()
    with torch.no_grad():
        middle, skips = unet.encode(torch.randn(1, 3, 32, 32), torch.tensor([5]))
    shapes = [(s.shape[1], s.shape[-1]) for s in skips]
    assert shapes == [(128, 32)] * 4 + [(128, 16)] + [(256, 16)] * 3 + [(256, 8)] * 4 + [(256, 4)] * 4
    assert tuple(middle.shape[1:]) == (256, 4, 4)
    assert pooled_features(middle, skips).shape == (1, 3712)


def test_decode_of_encode_equals_forward_bit_for_bit():
    torch.manual_seed(0)
    unet = UNet(28, 1, 64).eval()
    for p in unet.parameters():  # zero-initialised outputs would make the check trivial
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 17, 499])
    with torch.no_grad():
        middle, skips = unet.encode(x, t)
        assert tuple(middle.shape) == (3, 128, 7, 7) and len(skips) == 12
        assert torch.equal(unet.decode(middle, skips, t), unet(x, t))


def test_sdpa_attention_equals_reference_legacy_layout():
    torch.manual_seed(0)
    block = AttentionBlock(64, num_heads=4).double()
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    x = torch.randn(2, 64, 7, 7, dtype=torch.float64)
    flat = x.reshape(2, 64, -1)
    expected = (flat + block.proj_out(legacy_qkv_attention(block.qkv(block.norm(flat)), 4))).reshape(x.shape)
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


def test_attention_takes_the_fused_kernel_and_matches_the_math_kernel():
    # A transposed q/k/v view makes SDPA fall back to its math kernel, which on CPU is slower than the reference's
    # einsum. Restricting SDPA to the flash kernel raises "No available kernel" if the layout is not eligible.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    block = AttentionBlock(32, num_heads=4, norm_groups=8)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fused = block(x)
    fused_grad = torch.autograd.grad(fused.square().sum(), x)[0]
    with sdpa_kernel(SDPBackend.MATH):
        plain = block(x)
    plain_grad = torch.autograd.grad(plain.square().sum(), x)[0]
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-4, atol=1e-4)


def test_timestep_embedding_is_cos_then_sin_of_raw_index():
    emb = timestep_embedding(torch.tensor([0, 3]), 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(4), torch.zeros(4)]))


def test_head_appends_raw_step_index_and_classify_uses_encoder_only():
    torch.manual_seed(0)
    net = JointNetwork(UNet(28, 1, 16, num_res_blocks=1, attention_downsample=[], norm_groups=8), 10).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([0, 9])
    middle, skips = net.unet.encode(x, t)
    z = pooled_features(middle, skips)
    expected = net.head.layers(torch.cat([z, t[:, None].float()], dim=1))
    with torch.no_grad():
        torch.testing.assert_close(net.classify(x, t), expected)
    # n_res=1: stem 1 + level0 (1 + down 1) + level1 (2 + down 2) + level2 2 + middle 2 = 11 multiples of C
    assert z.shape[1] == net.unet.feature_dim == 16 * 11


def test_unet_without_default_channel_mult_needs_one():
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(image_size=48)
