"""One attention layer of the paper FMNIST UNet (28×28 = 784 tokens, C=64, 4 heads of 16), forward + backward.

Compares, in the same run, the authors' explicit legacy attention (``QKVAttentionLegacy``: einsum, softmax, einsum)
with ``scaled_dot_product_attention`` fed two ways:

- ``sdpa (transposed view)``: q, k, v as transposed views of the qkv projection (stride 784 on the head dim). No
  fused kernel accepts that layout, so SDPA silently falls back to its math kernel — slower than the reference.
- ``sdpa (contiguous)``: one copy into (3, B, heads, N, d) first, as ``AttentionBlock`` does; the fused
  (flash) CPU kernel runs and the (B·heads, N, N) weight matrix is never stored.

Each also under bf16 autocast. Prints ms per forward+backward and the ratio to the reference.

    python experiments/bench/bench_attention.py --batch 128
"""

from __future__ import annotations

import argparse
import runpy
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

# the authors' attention, kept with the tests as their reference
legacy_qkv_attention = runpy.run_path(str(Path(__file__).resolve().parents[2] / "tests" / "reference.py"))[
    "legacy_qkv_attention"]


def sdpa_transposed_view(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    b, width, n = qkv.shape
    d = width // (3 * heads)
    q, k, v = qkv.reshape(b, heads, 3, d, n).transpose(-1, -2).unbind(2)  # (B, heads, N, d), stride(-1) = N
    return F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, heads * d, n)


def sdpa_contiguous(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    b, width, n = qkv.shape
    d = width // (3 * heads)
    x = qkv.reshape(b, heads, 3, d, n).permute(2, 0, 1, 4, 3).contiguous()  # (3, B, heads, N, d)
    return F.scaled_dot_product_attention(x[0], x[1], x[2]).transpose(-1, -2).reshape(b, heads * d, n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--tokens", type=int, default=784)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*(kernel not used|stride 1).*")

    torch.manual_seed(0)
    qkv = torch.randn(args.batch, 3 * args.channels, args.tokens, requires_grad=True)
    grad_out = torch.randn(args.batch, args.channels, args.tokens)
    impls = {
        "reference (legacy einsum)": legacy_qkv_attention,
        "sdpa (transposed view)": sdpa_transposed_view,
        "sdpa (contiguous)": sdpa_contiguous,
    }
    print(f"B={args.batch} C={args.channels} N={args.tokens} heads={args.heads} threads={torch.get_num_threads()}")
    print(f"{'implementation':28s} {'dtype':10s} {'ms fwd+bwd':>11s} {'× ref':>7s}")
    base = None
    for bf16 in (False, True):
        for name, fn in impls.items():

            def once(fn=fn, bf16=bf16) -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = fn(qkv, args.heads)
                out.float().backward(grad_out)
                qkv.grad = None

            once()  # warm-up
            start = time.perf_counter()
            for _ in range(args.repeats):
                once()
            ms = (time.perf_counter() - start) / args.repeats * 1000
            base = base or ms
            print(f"{name:28s} {'bf16-mix' if bf16 else 'fp32':10s} {ms:11.1f} {base / ms:7.2f}", flush=True)


if __name__ == "__main__":
    main()
