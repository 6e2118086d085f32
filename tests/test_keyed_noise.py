"""The keyed per-sample noise (jointdiff.diffusion.keyed_noise): every number equals a pure-Python evaluation of the
same hash and Box–Muller, a sample's noise depends only on its key and draw, and the numbers are standard normal."""

from __future__ import annotations

import math

import numpy as np
import scipy.stats
import torch

from jointdiff.diffusion.engine import PerSampleNoise, sample_seed
from jointdiff.diffusion.keyed_noise import keyed_normal, split_key

M = 0xFFFFFFFF


def lowbias32(x: int) -> int:  # on Python ints: no overflow, no signedness to get wrong
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M
    x ^= x >> 15
    x = (x * 0x846CA68B) & M
    return x ^ (x >> 16)


def reference_normal(key: int, draw: int, j: int) -> float:
    d = lowbias32((draw ^ 0x9E3779B9) & M)
    k1, k2 = lowbias32((key & M) ^ d), lowbias32(((key >> 32) & M) ^ lowbias32(d ^ 1))
    u1 = ((lowbias32(k1 ^ lowbias32(j)) >> 8) + 0.5) / 2**24
    u2 = ((lowbias32(k2 ^ lowbias32(j)) >> 8) + 0.5) / 2**24
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def test_every_number_equals_the_pure_python_evaluation():
    keys = [sample_seed(s, i) for s, i in ((0, 0), (0, 1), (7, 12345), (2**40, 3))]
    words = torch.tensor([split_key(k) for k in keys], dtype=torch.int32)
    for draw in (0, 1, 499):
        got = keyed_normal(words, draw, 300, torch.float64)
        want = torch.tensor([[reference_normal(k, draw, j) for j in range(300)] for k in keys], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_sample_depends_only_on_its_key_and_draw():
    together = PerSampleNoise(3, range(6))
    part = PerSampleNoise(3, [4, 5])
    first = together((6, 1, 8, 8), torch.device("cpu"))
    assert torch.equal(part((2, 1, 8, 8), torch.device("cpu")), first[4:])
    second = together((6, 1, 8, 8), torch.device("cpu"))
    assert torch.equal(part((2, 1, 8, 8), torch.device("cpu")), second[4:])  # draw 1 of the same samples
    assert not torch.equal(first, second)
    assert not torch.equal(PerSampleNoise(4, range(6))((6, 1, 8, 8), torch.device("cpu")), first)


def test_the_draws_are_standard_normal_and_uncorrelated():
    noise = PerSampleNoise(0, range(256))
    x = torch.cat([noise((256, 784), torch.device("cpu"), torch.float64) for _ in range(2)])  # (512, 784)
    flat = x.flatten().numpy()
    n = flat.size
    assert abs(flat.mean()) < 5 / math.sqrt(n) and abs(flat.var() - 1) < 5 * math.sqrt(2 / n)
    assert scipy.stats.kstest(flat, "norm").pvalue > 1e-3
    # rows (samples, and the same sample's next draw) and columns (pixels) are uncorrelated: |r| ~ N(0, 1/√784)
    rows = np.corrcoef(x.numpy())
    off = rows[~np.eye(len(rows), dtype=bool)]
    assert np.abs(off).max() < 6 / math.sqrt(784)
    cols = np.corrcoef(x.numpy().T)
    assert np.abs(cols[~np.eye(len(cols), dtype=bool)]).max() < 6 / math.sqrt(512)
