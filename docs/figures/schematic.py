"""Draws docs/figures/method_schematic.png, the joint diffusion model at a glance (README).

    python docs/figures/schematic.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402


def box(ax, xy, w, h, text, color):
    ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02,rounding_size=0.04", fc=color, ec="#333333", lw=1))
    ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=9)


def arrow(ax, a, b, text="", dy=0.04, style="-|>", color="#333333"):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=12, lw=1.2, color=color))
    if text:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + dy, text, ha="center", va="bottom", fontsize=8, color=color)


def main(out: Path | None = None) -> Path:
    out = out or Path(__file__).with_name("method_schematic.png")
    fig, ax = plt.subplots(figsize=(7.2, 3.25))
    ax.set_xlim(0, 7.2)
    ax.set_ylim(0, 3.25)
    ax.axis("off")
    box(ax, (0.1, 1.9), 0.9, 0.6, "$x_0$", "#e8eef7")
    box(ax, (1.4, 1.9), 0.9, 0.6, "$x_i$", "#e8eef7")
    box(ax, (2.7, 1.75), 1.3, 0.9, "UNet\nencoder", "#fdebd0")
    box(ax, (4.6, 1.75), 1.3, 0.9, "UNet\ndecoder", "#fdebd0")
    box(ax, (6.2, 1.9), 0.9, 0.6, r"$\hat\epsilon$", "#e8eef7")
    box(ax, (2.7, 0.35), 1.3, 0.7, "pooled\nfeatures $z$", "#e2f0d9")
    box(ax, (4.6, 0.35), 1.3, 0.7, "classifier\nhead", "#e2f0d9")
    box(ax, (6.2, 0.4), 0.9, 0.6, r"$\hat y$", "#e8eef7")
    arrow(ax, (1.0, 2.2), (1.4, 2.2))
    ax.text(1.2, 2.62, "noise at\nstep $i$", ha="center", fontsize=8)
    arrow(ax, (2.3, 2.2), (2.7, 2.2))
    arrow(ax, (4.0, 2.2), (4.6, 2.2))
    ax.text(4.3, 2.27, "$m$, skips $e_k$", ha="center", fontsize=7)
    arrow(ax, (5.9, 2.2), (6.2, 2.2))
    arrow(ax, (3.35, 1.75), (3.35, 1.05), "", dy=0)
    arrow(ax, (4.0, 0.7), (4.6, 0.7))
    arrow(ax, (5.9, 0.7), (6.2, 0.7))
    ax.text(6.65, 2.6, r"$L_{diff}$", ha="center", fontsize=9)
    ax.text(6.65, 1.1, r"$\lambda\cdot CE$", ha="center", fontsize=9)
    arrow(ax, (4.6, 0.95), (3.75, 1.75), color="#b03a2e")
    ax.text(4.35, 1.38, r"sampling: $m, e_k \leftarrow m, e_k + \alpha\nabla\log p(y\,|\,z)$", fontsize=8,
            color="#b03a2e")
    ax.text(3.6, 3.05, "one network, one loss: $L = L_{diff} + \\lambda\\cdot CE$", ha="center", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    return out


if __name__ == "__main__":
    print(main())
