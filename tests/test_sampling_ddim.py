"""DDIM sampling and inversion against float64 closed forms and an independent numpy DDPM loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jointdiff.diffusion import GaussianDiffusion
from jointdiff.diffusion.ddim import ddim_invert, ddim_sample, respaced_timesteps
from jointdiff.nn.unet import UNet


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(8, 1, 16, (1, 2), 1, [], 2, 0.0, 8).eval()


def gaussian_eps_fn(diffusion: GaussianDiffusion, mean: float, std: float):
    """The exact ε-predictor for data ~ N(mean, std²) per pixel: ε* = √(1−ᾱ)(x − √ᾱ·mean)/(ᾱ·std² + 1 − ᾱ)."""
    ab = diffusion.tables64["alphas_cumprod"]

    def eps_fn(x, t):
        a = ab[t].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * mean) / (a * std**2 + 1 - a)

    return eps_fn


def guided_diffusion_space_timesteps(num_timesteps, section_counts):
    """A transcription of guided-diffusion's ``respace.space_timesteps`` (the authors' fork is unchanged), kept
    apart from the package so that the test compares against the original rule, not against itself."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired_count = int(section_counts[len("ddim"):])
            for i in range(1, num_timesteps):
                if len(range(0, num_timesteps, i)) == desired_count:
                    return set(range(0, num_timesteps, i))
            raise ValueError(f"cannot create exactly {num_timesteps} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        if section_count <= 1:
            frac_stride = 1
        else:
            frac_stride = (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken_steps = []
        for _ in range(section_count):
            taken_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken_steps
        start_idx += size
    return set(all_steps)


@pytest.mark.parametrize("T", [500, 1000])
def test_respaced_timesteps_equal_guided_diffusion_for_every_count(T):
    for S in range(1, T + 1):
        steps = respaced_timesteps(T, S)
        assert steps.dtype == torch.long and len(steps) == S
        assert steps.tolist() == sorted(guided_diffusion_space_timesteps(T, [S])), S
    # the accumulated stride, not round(k·stride): 10·(999/20) rounds to 500, the running sum to 499
    assert 499 in respaced_timesteps(1000, 21).tolist() and 500 not in respaced_timesteps(1000, 21).tolist()


def test_respaced_timesteps_sections_and_ddim_strings():
    for spec in ["ddim50", "ddim25", "ddim10", "10,15,20", "1,1", "7"]:
        assert respaced_timesteps(1000, spec).tolist() == sorted(guided_diffusion_space_timesteps(1000, spec))
    steps = respaced_timesteps(50, 7)
    assert steps[0] == 0 and steps[-1] == 49 and bool((steps[1:] > steps[:-1]).all())
    assert respaced_timesteps(10, 1).tolist() == [0]
    for bad in [(10, 0), (10, 11), (0, 1)]:
        with pytest.raises(ValueError, match="must be"):
            respaced_timesteps(*bad)
    with pytest.raises(ValueError, match="integer stride"):
        respaced_timesteps(1000, "ddim999")


def test_ddim_eta0_is_deterministic_and_draws_no_noise():
    net, diffusion = tiny_unet(), GaussianDiffusion(20)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    steps = respaced_timesteps(20, 7)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(99)
    a = ddim_sample(net, diffusion, x_T, steps, eta=0.0, generator=g1)
    b = ddim_sample(net, diffusion, x_T, steps, eta=0.0, generator=g2)
    assert torch.equal(a, b)
    assert torch.equal(g1.get_state(), torch.Generator().manual_seed(5).get_state())  # nothing drawn
    c = ddim_sample(net, diffusion, x_T, steps, eta=1.0, generator=torch.Generator().manual_seed(5))
    d = ddim_sample(net, diffusion, x_T, steps, eta=1.0, generator=torch.Generator().manual_seed(5))
    e = ddim_sample(net, diffusion, x_T, steps, eta=1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(c, d) and not torch.allclose(c, e) and not torch.allclose(a, c)


def test_ddim_eta0_matches_float64_closed_form_on_gaussian_data():
    # With the exact ε* of N(0, s²) data every DDIM step is x ← c_k·x with
    # c_k = (√(ᾱ_k ᾱ_prev)·s² + √((1−ᾱ_k)(1−ᾱ_prev))) / (ᾱ_k s² + 1 − ᾱ_k), so x_0 = x_T·Π c_k.
    diffusion, s = GaussianDiffusion(1000), 0.6
    steps = respaced_timesteps(1000, 37)
    ab = diffusion.tables64["alphas_cumprod"].numpy()
    levels = [1.0] + [ab[i] for i in steps.tolist()]
    prod = 1.0
    for k in range(1, len(levels)):
        a, a_prev = levels[k], levels[k - 1]
        prod *= (np.sqrt(a * a_prev) * s**2 + np.sqrt((1 - a) * (1 - a_prev))) / (a * s**2 + 1 - a)
    x_T = torch.randn(4, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0 = ddim_sample(gaussian_eps_fn(diffusion, 0.0, s), diffusion, x_T, steps)
    torch.testing.assert_close(x0, x_T * prod, rtol=1e-12, atol=1e-12)
    # the deterministic flow maps the N(0, v_T) prior onto N(0, s²) as the steps get finer (first order)
    target = s / np.sqrt(ab[-1] * s**2 + 1 - ab[-1])
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    gaps = [abs(ddim_sample(gaussian_eps_fn(diffusion, 0.0, s), diffusion, one, respaced_timesteps(1000, S)).item()
                - target) for S in (100, 1000)]
    assert gaps[1] < 0.003 and gaps[1] < gaps[0] / 5


def test_ddim_eta1_over_all_steps_is_ancestral_sampling_with_posterior_variance():
    """η=1 on every step equals DDPM with σ² = β̃ (independent numpy float64 loop, same noise stream)."""
    T = 30
    diffusion = GaussianDiffusion(T)

    def eps_fn(x, t):  # a nonlinear, step-dependent predictor
        return torch.tanh(x) * (1 + t.to(x.dtype).reshape(-1, 1, 1, 1) / T)

    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = ddim_sample(eps_fn, diffusion, x_T, respaced_timesteps(T, T), eta=1.0,
                       generator=torch.Generator().manual_seed(4))

    betas = np.linspace(1e-3 * 1000 / T, 0.02 * 1000 / T, T)  # the authors' linear schedule, the default
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    g = torch.Generator().manual_seed(4)
    x = x_T.numpy().copy()
    for i in range(T - 1, -1, -1):
        eps = np.tanh(x) * (1 + i / T)
        x0 = (x - np.sqrt(1 - ab[i]) * eps) / np.sqrt(ab[i])
        c1 = betas[i] * np.sqrt(ab_prev[i]) / (1 - ab[i])
        c2 = (1 - ab_prev[i]) * np.sqrt(1 - betas[i]) / (1 - ab[i])
        mean = c1 * x0 + c2 * x
        if i > 0:
            var = betas[i] * (1 - ab_prev[i]) / (1 - ab[i])
            x = mean + np.sqrt(var) * torch.randn(x.shape, dtype=torch.float64, generator=g).numpy()
        else:
            x = mean
    np.testing.assert_allclose(ours.numpy(), x, rtol=1e-9, atol=1e-9)


def test_inversion_then_sampling_round_trip():
    # Ho et al.'s schedule, on which the error bounds below were set (with the fork's 10× larger β_0 the step
    # between the clean level and τ_1 is coarser: 0.022 at S=400); the check is of DDIM, not of the schedule
    diffusion = GaussianDiffusion(1000, "ho_linear")
    x0 = torch.randn(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.4 + 0.1
    # exact when ε̂ is constant: every x̂0 along the path is x0 itself
    const = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    steps = respaced_timesteps(1000, 25)
    xT = ddim_invert(lambda x, t: const, diffusion, x0, steps)
    torch.testing.assert_close(ddim_sample(lambda x, t: const, diffusion, xT, steps), x0, rtol=1e-9, atol=1e-9)
    # close for a smooth ε̂ (the exact predictor of N(0.1, 0.4²) data) with enough steps, and closer with more
    errs = []
    for S in (100, 400):
        steps = respaced_timesteps(1000, S)
        eps_fn = gaussian_eps_fn(diffusion, 0.1, 0.4)
        xT = ddim_invert(eps_fn, diffusion, x0, steps)
        assert xT.std() > 0.8  # it really reached the noise level
        errs.append((ddim_sample(eps_fn, diffusion, xT, steps) - x0).abs().max().item())
    assert errs[1] < 0.02 and errs[1] < errs[0] / 3  # first-order: 4× the steps, about ¼ the error


def test_inversion_on_unet_float32_and_bad_arguments():
    net, diffusion = tiny_unet(), GaussianDiffusion(20)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    steps = respaced_timesteps(20, 20)
    xT = ddim_invert(net, diffusion, x0, steps)
    assert xT.shape == x0.shape and torch.isfinite(xT).all()
    with pytest.raises(ValueError, match="ascending"):
        ddim_sample(net, diffusion, xT, torch.tensor([0, 5, 3]))
    with pytest.raises(ValueError, match="0..19"):
        ddim_sample(net, diffusion, xT, torch.tensor([0, 20]))
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(net, diffusion, xT, steps, eta=-0.1)
