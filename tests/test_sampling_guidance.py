"""Classifier guidance (docs/design.md §5.3): gradient against closed forms, scale 0 = unguided, argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from jointdiff.diffusion import GaussianDiffusion, ddpm_sample
from jointdiff.diffusion.gaussian import extract
from jointdiff.diffusion.guidance import classifier_guided_sample, guidance_gradient
from jointdiff.nn.unet import UNet

N = 3


class LinearTimeClassifier(nn.Module):
    """logits = W·vec(x) + b·t: differentiable, noise-aware in the trivial sense, with a closed-form gradient."""

    def __init__(self, pixels: int, n: int = N, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(n, pixels, generator=g, dtype=dtype) * 0.3)
        self.b = nn.Parameter(torch.randn(n, generator=g, dtype=dtype) * 0.1)

    def forward(self, x, t):
        return x.flatten(1) @ self.W.T + t[:, None].to(x.dtype) * self.b


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    net = UNet(8, 1, 16, (1, 2), 1, [], 2, 0.0, 8)
    nn.init.normal_(net.out[-1].weight, std=0.05)  # the output conv is zero-initialised
    return net.eval()


def test_gradient_matches_closed_forms():
    clf = LinearTimeClassifier(16, dtype=torch.float64)
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 3, 9, 1])
    W, b = clf.W.detach().numpy(), clf.b.detach().numpy()
    logits = x.flatten(1).numpy() @ W.T + t.numpy()[:, None] * b
    # multiclass: ∇_x log softmax_y = W_y − Σ_k p_k W_k
    y = torch.tensor([0, 2, 1, 2])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = W[y.numpy()] - p @ W
    got = guidance_gradient(clf, x, t, y, "multiclass").flatten(1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    # multi-label: ∇_x Σ_a [y_a log σ(l_a) + (1−y_a) log(1−σ(l_a))] = Σ_a (y_a − σ(l_a)) W_a: toward the targets
    ym = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float64)
    expected = (ym.numpy() - 1 / (1 + np.exp(-logits))) @ W
    got = guidance_gradient(clf, x, t, ym, "multilabel").flatten(1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_scale_zero_equals_unguided_bit_for_bit_and_guidance_steers():
    net, diffusion = tiny_unet(), GaussianDiffusion(15)
    clf = LinearTimeClassifier(64)
    shape, y = (6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    for clip in (True, False):
        plain = ddpm_sample(net, diffusion, shape, generator=torch.Generator().manual_seed(2), clip_denoised=clip)
        s0 = classifier_guided_sample(net, clf, diffusion, shape, y, 0.0, num_classes=N,
                                      generator=torch.Generator().manual_seed(2), clip_denoised=clip)
        assert torch.equal(plain, s0)
    guided = classifier_guided_sample(net, clf, diffusion, shape, y, 20.0, num_classes=N,
                                      generator=torch.Generator().manual_seed(2))
    t0 = torch.zeros(6, dtype=torch.long)
    logp = lambda x: torch.log_softmax(clf(x, t0), 1).gather(1, y[:, None]).mean().item()  # noqa: E731
    assert logp(guided) > logp(plain) + 0.5


def test_one_guided_step_shifts_the_mean_by_s_sigma2_grad():
    """Run from T=2: the first (i=1) step by hand; the final step i=0 is noise-free."""
    net, diffusion = tiny_unet(), GaussianDiffusion(2)
    clf = LinearTimeClassifier(64)
    shape, y, s = (3, 1, 8, 8), torch.tensor([2, 0, 1]), 4.0
    ours = classifier_guided_sample(net, clf, diffusion, shape, y, s, num_classes=N, clip_denoised=False,
                                    generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g)
    for i in (1, 0):
        t = torch.full((3,), i)
        with torch.no_grad():
            mean = diffusion.p_mean(x, t, net(x, t))
        var = diffusion.tables64["sampling_variance"][i].item()
        xg = x.clone().requires_grad_(True)
        torch.log_softmax(clf(xg, t), 1).gather(1, y[:, None]).sum().backward()
        x = mean + s * var * xg.grad + (i > 0) * var**0.5 * torch.randn(shape, generator=g)
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
    assert extract(diffusion.sampling_variance, torch.tensor([1]), 4).item() == pytest.approx(diffusion.betas[1].item())


def test_bad_arguments():
    net, diffusion, clf = tiny_unet(), GaussianDiffusion(5), LinearTimeClassifier(64)
    with pytest.raises(ValueError, match="unknown class 3"):
        classifier_guided_sample(net, clf, diffusion, (2, 1, 8, 8), torch.tensor([3, 0]), 1.0, num_classes=N)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        classifier_guided_sample(net, clf, diffusion, (2, 1, 8, 8), torch.tensor([1, 0]), -1.0, num_classes=N)
