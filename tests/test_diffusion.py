"""Diffusion math against float64 closed forms computed independently here (docs/design.md §3)."""

import math

import numpy as np
import pytest
import torch

from jointdiff.diffusion import GaussianDiffusion, ddpm_sample, eps_loss, make_beta_schedule
from jointdiff.images import to_uint8


def fork_linear_betas(num_diffusion_timesteps: int) -> np.ndarray:
    """The authors' fork of guided-diffusion, ``get_named_beta_schedule("linear", T)``, transcribed."""
    if num_diffusion_timesteps < 10:
        scale = 100 / num_diffusion_timesteps
        multiply = 0.01
    else:
        scale = 1000 / num_diffusion_timesteps
        multiply = 0.001
    return np.linspace(scale * multiply, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)


def test_reference_linear_schedule_is_the_forks_formula():
    for T in [3, 5, 9, 21, 50, 100, 250, 500, 1000, 4000]:
        betas = make_beta_schedule("reference_linear", T)
        assert betas.dtype == torch.float64 and len(betas) == T
        np.testing.assert_array_equal(betas.numpy(), fork_linear_betas(T))
    # the paper's two settings: T=1000 runs 1e-3 → 0.02, T=500 runs 2e-3 → 0.04 (√β_0 ≈ 0.045)
    assert make_beta_schedule("reference_linear", 500)[[0, -1]].tolist() == pytest.approx([2e-3, 0.04], rel=1e-12)
    assert make_beta_schedule("reference_linear", 1000)[[0, -1]].tolist() == pytest.approx([1e-3, 0.02], rel=1e-12)
    assert GaussianDiffusion(500).schedule == "reference_linear"  # the default of every model


def test_ho_linear_schedule_scales_with_T():
    for T, lo, hi in [(1000, 1e-4, 0.02), (500, 2e-4, 0.04)]:
        betas = make_beta_schedule("ho_linear", T)
        assert betas.dtype == torch.float64 and len(betas) == T
        np.testing.assert_allclose(betas.numpy(), np.linspace(lo, hi, T), rtol=0, atol=1e-15)


def test_legacy_linear_name_reads_as_ho_linear():
    # checkpoints written before the split say "linear": they were trained on Ho et al.'s schedule
    assert GaussianDiffusion(500, "linear").schedule == "ho_linear"
    assert torch.equal(make_beta_schedule("linear", 500), make_beta_schedule("ho_linear", 500))


def test_cosine_schedule_matches_alpha_bar_formula():
    T, s = 100, 0.008
    betas = make_beta_schedule("cosine", T).numpy()
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    ab = np.cumprod(1 - betas)
    # ᾱ_i = f(i+1)/f(0) while no β is clipped at 0.999 (all but the very last steps)
    np.testing.assert_allclose(ab[:-1], [f(i + 1) / f(0) for i in range(T - 1)], rtol=1e-10)


def test_tiny_T_clips_beta_instead_of_reaching_one():
    for name in ("reference_linear", "ho_linear"):
        betas = make_beta_schedule(name, 10)
        assert betas.max() == 0.999 and (1 - betas).prod() > 0
        assert make_beta_schedule(name, 21).max() < 0.999  # nothing clipped beyond T = 20


def test_dtype_casts_leave_schedule_tables_exact():
    d = GaussianDiffusion(500).half()
    assert d.alphas_cumprod.dtype == torch.float32
    torch.testing.assert_close(d.alphas_cumprod, d.tables64["alphas_cumprod"].float(), rtol=0, atol=0)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_beta_schedule("quadratic", 10)


@pytest.fixture(scope="module")
def diff():
    return GaussianDiffusion(50, "reference_linear", dtype=torch.float64)


def closed_forms(T: int, i: int):
    betas = fork_linear_betas(T)
    ab = np.cumprod(1 - betas)
    ab_prev = 1.0 if i == 0 else ab[i - 1]
    return betas[i], ab[i], ab_prev


def test_q_sample_and_predict_x0_are_inverse_closed_forms(diff):
    torch.manual_seed(0)
    x0, noise = torch.randn(4, 1, 3, 3, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    t = torch.tensor([0, 7, 30, 49])
    xt = diff.q_sample(x0, t, noise)
    for b, i in enumerate(t.tolist()):
        _, ab, _ = closed_forms(50, i)
        np.testing.assert_allclose(xt[b].numpy(), math.sqrt(ab) * x0[b].numpy() + math.sqrt(1 - ab) * noise[b].numpy())
    torch.testing.assert_close(diff.predict_x0(xt, t, noise), x0, rtol=1e-9, atol=1e-9)


def test_posterior_mean_is_bayes_product_of_gaussians(diff):
    """q(x_{i-1}|x_i,x0) ∝ N(x_i; √α_i x_{i-1}, β_i) · N(x_{i-1}; √ᾱ_{i-1} x0, 1-ᾱ_{i-1}), solved directly."""
    torch.manual_seed(1)
    x0, xt = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([1, 20, 49])
    mean = diff.posterior_mean(x0, xt, t)
    for b, i in enumerate(t.tolist()):
        beta, _, ab_prev = closed_forms(50, i)
        alpha = 1 - beta
        precision = alpha / beta + 1 / (1 - ab_prev)
        expected = (math.sqrt(alpha) / beta * xt[b].numpy()
                    + math.sqrt(ab_prev) / (1 - ab_prev) * x0[b].numpy()) / precision
        np.testing.assert_allclose(mean[b].numpy(), expected, rtol=1e-10)


def test_fixed_large_variance(diff):
    beta1, ab1, ab0 = closed_forms(50, 1)
    var = diff.sampling_variance.numpy()
    np.testing.assert_allclose(var[0], beta1 * (1 - ab0) / (1 - ab1), rtol=1e-6)  # σ_0² = β̃_1
    np.testing.assert_allclose(var[1:], fork_linear_betas(50)[1:], rtol=1e-6)


def test_last_step_adds_no_noise(diff):
    xt, eps = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    t = torch.tensor([0, 0])
    out = diff.p_sample_step(xt, t, eps, noise=torch.full_like(xt, 100.0))
    torch.testing.assert_close(out, diff.p_mean(xt, t, eps))


def test_ddpm_sampling_is_deterministic_given_generator_and_uses_all_steps():
    diffusion = GaussianDiffusion(20)
    calls = []

    def eps_fn(x, t):
        calls.append(int(t[0]))
        return 0.1 * x

    a = ddpm_sample(eps_fn, diffusion, (2, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    b = ddpm_sample(eps_fn, diffusion, (2, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert calls[:20] == list(range(19, -1, -1))


def test_ddpm_sampler_on_gaussian_data_reaches_the_data_distribution():
    """For x0 ~ N(0, s²) the exact ε-predictor is linear: ε* = √(1-ᾱ)·x/(ᾱ s² + 1 - ᾱ). Sampling with it must
    produce samples with std ≈ s — an end-to-end check of the reverse process."""
    diffusion = GaussianDiffusion(200, dtype=torch.float64)
    s = 0.5
    ab = diffusion.alphas_cumprod

    def eps_fn(x, t):
        a = ab[t].reshape(-1, 1)
        return (1 - a).sqrt() * x / (a * s**2 + 1 - a)

    gen = torch.Generator().manual_seed(0)
    x = ddpm_sample(eps_fn, diffusion, (20000, 1), generator=gen).float()
    assert abs(x.std().item() - s) < 0.02 and abs(x.mean().item()) < 0.02


def test_eps_loss_is_mean_squared_error():
    a, b = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    torch.testing.assert_close(eps_loss(a, b), torch.nn.functional.mse_loss(a, b))


def test_uint8_mapping_truncates_like_reference():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 127, 254, 255, 255]
