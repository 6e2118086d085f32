"""The one reverse-process loop (jointdiff.diffusion.engine): the joint sampler on a respaced grid against a
hand-written float64 loop, the α rule on respaced grids, per-sample seeding, and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import N_CLASSES, tiny_joint, tiny_joint64

from jointdiff.diffusion import GaussianDiffusion
from jointdiff.diffusion.conditional import joint_conditional_denoise, joint_conditional_sample
from jointdiff.diffusion.ddim import respaced_timesteps
from jointdiff.diffusion.engine import PerSampleNoise, reverse_process, sample_seed
from jointdiff.tasks import classification_loss

T = 20


def reference_respaced_joint(net, diffusion, x, steps, y, alphas, eta, xis):
    """Algorithm 1 on a DDIM grid, written out from the formulas with nothing of the engine: encoder outputs moved
    by α·∂ℓ/∂(m, e) (autograd on a fresh graph), decoded, then guided-diffusion's η-DDIM step with ᾱ from a
    float64 cumulative product of the β table; ``xis`` is the noise of each step in order."""
    abar = torch.cumprod(1 - diffusion.tables64["betas"], 0)
    prevs = [-1, *steps[:-1]]
    for k, (i, prev) in enumerate(reversed(list(zip(steps, prevs, strict=True)))):
        t = torch.full((x.shape[0],), i, dtype=torch.long)
        xg = x.detach().requires_grad_(True)
        m, skips = net.unet.encode(xg, t)
        loss = classification_loss(net.classify_features(m, skips, t), y, "multiclass", reduction="sum")
        grads = torch.autograd.grad(loss, [m, *skips])
        a = alphas[k]
        eps = net.unet.decode(m + a * grads[0], [e + a * g for e, g in zip(skips, grads[1:], strict=True)], t).detach()
        ab, ab_prev = abar[i].item(), (abar[prev].item() if prev >= 0 else 1.0)
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma**2) * eps + sigma * xis[k]
    return x


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_respaced_joint_sampler_equals_a_hand_written_float64_loop(eta):
    net = tiny_joint64()
    diffusion = GaussianDiffusion(T, dtype=torch.float64)
    steps = respaced_timesteps(T, 6).tolist()
    y = torch.tensor([0, 2])
    x_T = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xis = torch.randn(len(steps), 2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    draws = iter(xis)

    def noise(shape, device, dtype):  # the engine's noise source, replaying xis in order
        return next(draws)

    alpha = 3.0
    gaps = [i - p for i, p in zip(steps, [-1, *steps[:-1]], strict=True)][::-1]  # in the order the loop runs
    for rule, alphas in (("same", [alpha] * len(steps)), ("stride", [alpha * g for g in gaps])):
        draws = iter(xis)
        got = reverse_process(net, diffusion, x_T, steps, update="ddim", eta=eta, noise=noise,
                              steer=_steering(net, y, alpha, rule))
        want = reference_respaced_joint(net, diffusion, x_T, steps, y, alphas, eta, xis)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def _steering(net, y, alpha, rule):
    from jointdiff.diffusion.conditional import ClassSteering

    return ClassSteering(net, y, [alpha] * T, 1, "multiclass", rule)


def test_the_two_alpha_rules_agree_on_the_full_grid_and_stride_scales_by_the_gap():
    net = tiny_joint()
    diffusion = GaussianDiffusion(T)
    y = torch.tensor([1, 0])
    full = list(range(T))
    run = lambda rule, grid, a: joint_conditional_sample(  # noqa: E731
        net, diffusion, (2, 1, 8, 8), y, a, generator=torch.Generator().manual_seed(0), timesteps=grid,
        respaced_alpha=rule)
    torch.testing.assert_close(run("same", full, 2.0), run("stride", full, 2.0), rtol=0, atol=0)
    grid = respaced_timesteps(T, 5).tolist()
    # "stride" with a constant α is "same" with α·(τ_k − τ_{k−1}) at each grid step
    per_step = [0.0] * T
    for i, p in zip(grid, [-1, *grid[:-1]], strict=True):
        per_step[i] = 2.0 * (i - p)
    torch.testing.assert_close(run("stride", grid, 2.0), run("same", grid, per_step), rtol=0, atol=0)
    assert not torch.equal(run("stride", grid, 2.0), run("same", grid, 2.0))


def test_full_grid_ddim_with_eta_zero_steering_is_deterministic_and_alpha_zero_is_plain_ddim():
    from jointdiff.diffusion.ddim import ddim_sample

    net = tiny_joint()
    diffusion = GaussianDiffusion(T)
    grid = respaced_timesteps(T, 7)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    plain = ddim_sample(net, diffusion, x_T, grid)
    steered0 = joint_conditional_sample(net, diffusion, (3, 1, 8, 8), torch.tensor([0, 1, 2]), 0.0,
                                        generator=torch.Generator().manual_seed(4), timesteps=grid)
    torch.testing.assert_close(steered0, plain, rtol=1e-6, atol=1e-6)


def test_per_sample_noise_makes_a_sample_independent_of_its_batch():
    """Sample k with seed s is the same image whatever batch it is drawn in and whatever classes share it."""
    net = tiny_joint64()  # float64, so that batch-size-dependent convolution kernels cannot blur the comparison
    diffusion = GaussianDiffusion(T, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 1, 0])

    def draw(indices, ys):
        noise = PerSampleNoise(7, indices)
        x = noise((len(indices), 1, 8, 8), torch.device("cpu"), torch.float64)
        return joint_conditional_denoise(net, diffusion, x, T - 1, ys, 5.0, generator=noise)

    together = draw(range(5), targets)
    alone = torch.cat([draw([k], targets[k:k + 1]) for k in range(5)])
    shifted = draw([3, 4], targets[3:])  # a shard that starts at index 3, as a second process draws it
    torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(shifted, together[3:], rtol=1e-9, atol=1e-9)
    # different indices and different seeds give different streams
    assert len({sample_seed(s, i) for s in range(3) for i in range(100)}) == 300
    assert not torch.equal(draw([0], targets[:1]), draw([1], targets[:1]))


def test_engine_rejects_inconsistent_configurations():
    net = tiny_joint(num_outputs=N_CLASSES)
    diffusion = GaussianDiffusion(T)
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="contiguous grid"):
        reverse_process(net, diffusion, x, [0, 5, 10], update="ddpm")
    with pytest.raises(ValueError, match="needs update='ddpm'"):
        reverse_process(net, diffusion, x, [0, 5], update="ddim", mean_shift=lambda x, step: 0 * x)
    with pytest.raises(ValueError, match="encode/decode"):
        reverse_process(lambda x, t: x, diffusion, x, steer=lambda f, step: f)
    with pytest.raises(ValueError, match="strictly ascending"):
        reverse_process(net, diffusion, x, [3, 1], update="ddim")
    with pytest.raises(ValueError, match="timesteps must end at start_step"):
        joint_conditional_sample(net, diffusion, (1, 1, 8, 8), torch.tensor([0]), 1.0, timesteps=[0, 5])
    with pytest.raises(ValueError, match="per-sample noise for 2 samples"):
        PerSampleNoise(0, [0, 1])((3, 1, 8, 8), torch.device("cpu"), torch.float32)
