"""Counter-based Gaussian noise: element ``j`` of draw ``d`` of a sample keyed ``k`` is a pure function of
``(k, d, j)``, computed for a whole batch in a few elementwise tensor ops on the batch's own device.

This is what per-sample seeding needs on large batches: a sample's noise does not depend on its batch, its position
in the batch or the number of processes (only on its key), and no per-sample generator, Python loop or host-to-device
copy is involved. torch offers no keyed draw of this kind (its generators are stateful streams; Philox counters are
not exposed per element), so the hash is written here: Wellons' ``lowbias32``, a bijection of 32-bit words with
near-ideal avalanche, on int32 tensors (multiplication wraps modulo 2³², right shifts are made logical by a mask),
then Box–Muller in float64 on the top 24 bits of two hashes. ``tests/test_keyed_noise.py`` checks every number
against a pure-Python evaluation and checks the statistics.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B - (1 << 32)  # lowbias32's multipliers as int32 (the same product modulo 2³²)
_DRAW_SALT = 0x9E3779B9  # the golden-ratio word: keeps draw 0 apart from a key's raw words


def to_int32(word: int) -> int:
    """A 32-bit word as the int32 with the same bits."""
    word &= MASK32
    return word - (1 << 32) if word >= 1 << 31 else word


def mix32(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` (C. Wellons) of int32 words (their bits read as unsigned)."""
    # torch.bitwise_right_shift is arithmetic on int32: the mask makes it logical. (``x >> k`` with a Python int
    # takes a much slower path on CPU.)
    x = x ^ (torch.bitwise_right_shift(x, 16) & 0xFFFF)
    x = x * _M1
    x = x ^ (torch.bitwise_right_shift(x, 15) & 0x1FFFF)
    x = x * _M2
    return x ^ (torch.bitwise_right_shift(x, 16) & 0xFFFF)


def split_key(key: int) -> tuple[int, int]:
    """The two 32-bit words of a (≤ 64-bit) sample key, as int32."""
    return to_int32(key), to_int32(key >> 32)


_ELEMENT_WORDS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _element_words(numel: int, device: torch.device) -> torch.Tensor:
    """``mix32(j)`` for every element index j, (1, numel); computed once per size and device."""
    key = (numel, device)
    if key not in _ELEMENT_WORDS:
        _ELEMENT_WORDS[key] = mix32(torch.arange(numel, dtype=torch.int32, device=device))[None, :]
    return _ELEMENT_WORDS[key]


def _unit(words: torch.Tensor) -> torch.Tensor:
    """Top 24 bits of each word → float64 in (0, 1), exactly representable, never 0 (so the logarithm is finite)."""
    return ((torch.bitwise_right_shift(words, 8) & 0xFFFFFF).double() + 0.5) * 2.0**-24


def keyed_normal(keys: torch.Tensor, draw: int, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, numel) standard normal numbers; row b is a function of ``keys[b]`` ((B, 2) int32 words), ``draw`` and the
    element index only."""
    d = mix32(torch.tensor(to_int32(draw ^ _DRAW_SALT), dtype=torch.int32, device=keys.device))
    k1 = mix32(keys[:, 0] ^ d)[:, None]  # (B, 1)
    k2 = mix32(keys[:, 1] ^ mix32(d ^ 1))[:, None]
    j = _element_words(numel, keys.device)  # (1, numel)
    u1, u2 = _unit(mix32(k1 ^ j)), _unit(mix32(k2 ^ j))
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).to(dtype)
