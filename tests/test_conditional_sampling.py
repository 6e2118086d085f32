"""Joint conditional sampler (docs/design.md §5.1): feature updates = total derivatives, α=0 = unconditional,
argument checks."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_joint, tiny_joint64

from jointdiff.diffusion import GaussianDiffusion, ddpm_sample
from jointdiff.diffusion.conditional import (
    alpha_schedule,
    joint_conditional_denoise,
    joint_conditional_sample,
    steer_features,
)
from jointdiff.nn.joint import JointNetwork
from jointdiff.tasks import classification_loss


def steered_features(net, x, t, y, alpha, direction=1, task="multiclass"):
    """One encoder pass and :func:`steer_features` on its outputs (step size d·α)."""
    with torch.enable_grad():
        middle, skips = net.encode(x.detach().requires_grad_(True), t)
    return steer_features(net, middle, skips, t, y, direction * alpha, task)


def tap_modules(net: JointNetwork) -> list[torch.nn.Module]:
    """Modules whose outputs are (m, e_1, …, e_K) in the order ``encode`` returns them."""
    return [net.unet.middle_out, net.unet.stem, *net.unet.input_blocks]


def loss_with_tap_shift(net, x, t, y, task, k, delta):
    """ℓ with ``delta`` added to encoder tap k *inside* the encoder (so later blocks see it): no autograd."""
    handle = tap_modules(net)[k].register_forward_hook(lambda mod, inp, out: out + delta)
    try:
        with torch.no_grad():
            m, skips = net.unet.encode(x, t)
            return classification_loss(net.classify_features(m, skips, t), y, task, reduction="sum").item()
    finally:
        handle.remove()


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_feature_updates_are_total_derivatives_by_finite_differences(task):
    net = tiny_joint64()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([7, 2, 0])
    y = torch.tensor([0, 2, 1]) if task == "multiclass" else torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0]]).double()
    with torch.no_grad():
        m, skips = net.unet.encode(x, t)
    alpha = 0.5
    m_up, skips_up, logits = steered_features(net, x, t, y, alpha, direction=1, task=task)
    m_dn, skips_dn, _ = steered_features(net, x, t, y, alpha, direction=-1, task=task)
    torch.testing.assert_close(logits, net.classify_features(m, skips, t))
    taps, ups, dns = [m, *skips], [m_up, *skips_up], [m_dn, *skips_dn]
    assert len(taps) == len(tap_modules(net))
    gen = torch.Generator().manual_seed(2)
    h = 1e-5
    for k, (orig, up, dn) in enumerate(zip(taps, ups, dns, strict=True)):
        grad = (up - orig) / alpha
        torch.testing.assert_close(dn - orig, -(up - orig), rtol=1e-9, atol=1e-12)  # direction flips the step
        v = torch.randn(orig.shape, dtype=torch.float64, generator=gen)
        plus, minus = (loss_with_tap_shift(net, x, t, y, task, k, s * h * v) for s in (1, -1))
        fd = (plus - minus) / (2 * h)
        assert (grad * v).sum().item() == pytest.approx(fd, rel=1e-5, abs=1e-8), f"tap {k}"
    # the stem output also reaches the loss through every later block: its total derivative is not just the
    # direct GAP path, and finite differences agreed with the total one above
    stem = skips[0].detach().requires_grad_(True)
    logits = net.classify_features(m, [stem, *skips[1:]], t)
    direct = torch.autograd.grad(classification_loss(logits, y, task, reduction="sum"), stem)[0]
    assert not torch.allclose(direct, (skips_up[0] - skips[0]) / alpha, rtol=1e-3)


def test_step_matches_reference_retain_grad_computation():
    """One step from step i equals the reference's recipe: retain_grad on the taps, one backward, update, decode."""
    net, diffusion = tiny_joint(), GaussianDiffusion(12)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 1])
    i, alpha = 5, 3.0
    seen = []
    ours = joint_conditional_denoise(net, diffusion, x, i, y, alpha, generator=torch.Generator().manual_seed(9),
                                     on_step=lambda step, logits: seen.append(step))
    assert seen == list(range(i, -1, -1))

    g = torch.Generator().manual_seed(9)
    xr = x.clone()
    for step in range(i, -1, -1):
        t = torch.full((4,), step, dtype=torch.long)
        with torch.enable_grad():
            net.zero_grad(set_to_none=True)
            m, skips = net.unet.encode(xr, t)
            for tensor in [m, *skips]:
                tensor.retain_grad()
            torch.nn.functional.cross_entropy(net.classify_features(m, skips, t), y, reduction="sum").backward()
        with torch.no_grad():
            eps = net.unet.decode(m + alpha * m.grad, [e + alpha * e.grad for e in skips], t)
            xr = diffusion.p_sample_step(xr, t, eps, torch.randn(xr.shape, generator=g))
    torch.testing.assert_close(ours, xr, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours, joint_conditional_denoise(net, diffusion, x, i, y, 0.0,
                                                              generator=torch.Generator().manual_seed(9)))


def test_alpha_zero_reproduces_unconditional_sampling_bit_for_bit():
    net, diffusion = tiny_joint(), GaussianDiffusion(15)
    shape = (5, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1])
    uncond = ddpm_sample(net, diffusion, shape, generator=torch.Generator().manual_seed(4))
    cond0 = joint_conditional_sample(net, diffusion, shape, y, 0.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(uncond, cond0)
    per_step0 = joint_conditional_sample(net, diffusion, shape, y, [0.0] * 15,
                                         generator=torch.Generator().manual_seed(4))
    assert torch.equal(uncond, per_step0)
    cond = joint_conditional_sample(net, diffusion, shape, y, 50.0, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(uncond, cond, atol=1e-3)


def test_alpha_per_step_and_batch_independence():
    net, diffusion = tiny_joint(), GaussianDiffusion(10)
    shape, y = (4, 1, 8, 8), torch.tensor([2, 0, 1, 1])
    const = joint_conditional_sample(net, diffusion, shape, y, 20.0, generator=torch.Generator().manual_seed(5))
    listed = joint_conditional_sample(net, diffusion, shape, y, torch.full((10,), 20.0),
                                      generator=torch.Generator().manual_seed(5))
    assert torch.equal(const, listed)
    # α only at step 0 changes only the last step: same as α=0 until then (from step 3 of a T=40 schedule, where
    # a random-weight network's samples stay of order one)
    diffusion40, x3 = GaussianDiffusion(40), torch.randn(shape, generator=torch.Generator().manual_seed(8))
    trace_a, trace_b = [], []
    xa = joint_conditional_denoise(net, diffusion40, x3, 3, y, [20.0] + [0.0] * 39,
                                   generator=torch.Generator().manual_seed(5), on_step=lambda i, lg: trace_a.append(lg))
    xb = joint_conditional_denoise(net, diffusion40, x3, 3, y, 0.0,
                                   generator=torch.Generator().manual_seed(5), on_step=lambda i, lg: trace_b.append(lg))
    # every step's logits (taken before that step's update) agree, the final sample does not
    assert len(trace_a) == 4 and all(torch.equal(a, b) for a, b in zip(trace_a, trace_b, strict=True))
    assert (xa - xb).abs().max() > 1e-3
    # summed loss + eval-mode head: a sample's update does not depend on the rest of the batch
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([3, 3, 3, 3])
    m4, s4, _ = steered_features(net, x, t, y, 7.0)
    m2, s2, _ = steered_features(net, x[:2], t[:2], y[:2], 7.0)
    torch.testing.assert_close(m4[:2], m2)
    for a, b in zip(s4, s2, strict=True):
        torch.testing.assert_close(a[:2], b)


def test_bad_arguments_give_clear_errors():
    net, diffusion = tiny_joint(), GaussianDiffusion(10)
    shape = (2, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown class 3"):
        joint_conditional_sample(net, diffusion, shape, torch.tensor([0, 3]), 1.0)
    with pytest.raises(ValueError, match="alpha must be finite and >= 0"):
        joint_conditional_sample(net, diffusion, shape, torch.tensor([0, 1]), -1.0)
    with pytest.raises(ValueError, match="one value per diffusion step"):
        alpha_schedule([1.0, 2.0], 10)
    with pytest.raises(ValueError, match="direction"):
        joint_conditional_sample(net, diffusion, shape, torch.tensor([0, 1]), 1.0, direction=0)
    with pytest.raises(ValueError, match="2 targets for a batch of 3"):
        joint_conditional_sample(net, diffusion, (3, 1, 8, 8), torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match=r"multilabel targets must be \(B, 3\)"):
        joint_conditional_sample(net, diffusion, shape, torch.ones(2, 4), 1.0, task="multilabel")
    with pytest.raises(ValueError, match="eval mode"):
        joint_conditional_sample(net.train(), diffusion, shape, torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match="classifier head"):
        joint_conditional_sample(tiny_joint(None), diffusion, shape, torch.tensor([0, 1]), 1.0)


def test_reference_direction_raises_and_flipped_direction_lowers_an_external_hit_rate(tmp_path):
    """D11 on a trained model: ascent on the target CE (+1, the reference) steers samples *toward* the target as an
    external rule judges them; the flipped sign steers away. The judge is no network: it reads which quadrant is
    brightest, which is what defines the class of ``QuadrantData``.

    The outcome of a training run differs between CPUs as much as between seeds, so the margins asserted here are
    proven over seeds. Hit rates of this exact test (400 steps, 256 samples) with ``seed_everything(s)``,
    s = 0…7, as (α·direction = −30, 0, +30), measured 2026-12-07:
    (.012 .234 .809) (.043 .266 .707) (.125 .262 .402) (.012 .234 .836) (.008 .246 .711) (.027 .297 .680)
    (.000 .270 .859) (.043 .258 .605). The smallest margins, 0.14 up and 0.137 down (seed 2), are 2.7× the 0.05
    asserted and 4× the standard deviation of a difference of two hit rates of 256 samples (≈ 0.035). At 150
    steps and α = 10 (this test's earlier design) seed 2 did not steer at all (.230 .238 .232)."""
    import lightning as L
    from conftest import QuadrantData, quiet_trainer

    from jointdiff.models import JointDiffusion

    class Data(QuadrantData):
        sizes = (512, 32, 32)

    L.seed_everything(0)
    model = JointDiffusion(
        image_size=8, channels=1, num_classes=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_downsample=[], norm_groups=8, diffusion_steps=20, classifier_weight=1.0, noisy_classifier="replace",
        classifier_augmentation="off", lr=2e-3, ema_decay=0.9, dropout=0.0, head_dropout=0.0,
    )
    quiet_trainer(tmp_path, max_steps=400, limit_val_batches=0).fit(model, datamodule=Data(batch_size=32))
    net = model.eval_network.eval()

    def brightest_quadrant(x):
        return torch.stack([x[:, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].mean((1, 2)) for r in (0, 1) for c in (0, 1)],
                           1).argmax(1)

    y = torch.arange(4).repeat(64)
    hit = {}
    for alpha, direction in ((0.0, 1), (30.0, 1), (30.0, -1)):
        g = torch.Generator().manual_seed(0)
        x = joint_conditional_sample(net, model.diffusion, (256, 1, 8, 8), y, alpha, direction=direction, generator=g)
        hit[alpha * direction] = (brightest_quadrant(x) == y).float().mean().item()
    assert hit[30.0] > hit[0.0] + 0.05 and hit[-30.0] < hit[0.0] - 0.05, hit
