"""The joint sampler over a list of α, scored per α (the paper's Fig. 4, D10): hit rates, FID and PRD of each α's
samples (:func:`score`), the sweep itself (:func:`run_alpha_sweep`, every α from the same per-sample seeds) and its
table/plot (:func:`write_sweep`). The command is ``jointdiff alpha-sweep`` (usage in
:mod:`jointdiff.commands.alpha_sweep`)."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch

from jointdiff.data.base import ImageDataModule
from jointdiff.diffusion.conditional import RespacedAlpha
from jointdiff.diffusion.ddim import RESPACED_ETA, SWEEP_STEPS
from jointdiff.files import atomic_write_json
from jointdiff.images import save_grid
from jointdiff.sampling.files import write_samples
from jointdiff.sampling.generate import check_sampler_args, sharded_generate
from jointdiff.sampling.loading import load_on_processes, pick_network
from jointdiff.tasks import check_targets, hits

Features = Callable[[torch.Tensor], torch.Tensor]  # images in [-1, 1] → (B, D)
Logits = Callable[[torch.Tensor], torch.Tensor]  # images in [-1, 1] → (B, n)

COLUMNS = ("alpha", "judge_hit_rate", "own_head_hit_rate", "fid", "precision", "recall", "num", "seconds")


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def score(
    images: torch.Tensor,
    targets: torch.Tensor,
    task: str,
    *,
    judge: Logits | None = None,
    own_head: Logits | None = None,
    features: Features | None = None,
    real_features: torch.Tensor | None = None,
    prd_seed: int = 0,
) -> dict:
    """Class hit rates and, given a feature map and real features, FID and PRD precision/recall."""
    row: dict = {"num": len(images)}
    if judge is not None:
        row["judge_hit_rate"] = float(hits(batched(judge, images), targets, task).float().mean())
    if own_head is not None:
        row["own_head_hit_rate"] = float(hits(batched(own_head, images), targets, task).float().mean())
    if features is not None and real_features is not None:
        from jointdiff.metrics.frechet import FrechetDistance
        from jointdiff.metrics.prd import prd_precision_recall

        fake = batched(features, images).double()
        fid = FrechetDistance(fake.shape[1])
        fid.update(real_features.double(), real=True)
        fid.update(fake, real=False)
        row["fid"] = float(fid.compute())
        row["precision"], row["recall"] = prd_precision_recall(fake.float(), real_features.float(), seed=prd_seed)
    return row


def run_alpha_sweep(
    model,
    alphas: Sequence[float],
    classes: Sequence[int],
    num_per_class: int,
    *,
    judge: Logits | None = None,
    features: Features | None = None,
    real_features: torch.Tensor | None = None,
    direction: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    weights: str = "model",
    grids: Path | None = None,
    progress: bool = False,
    clip_denoised: bool = False,
    steps: int | None = None,
    eta: float = RESPACED_ETA,
    respaced_alpha: RespacedAlpha = "same",
    fabric=None,
) -> list[dict]:
    """One row per α (see :data:`COLUMNS`), every α from the same per-sample seeds (paired chains), batches filled
    across classes. ``clip_denoised``: clamp x̂0 at every step (the reference sampler does not). ``steps``: run the
    joint sampler η-DDIM on that many respaced steps (α per step by ``respaced_alpha``). ``fabric``: a launched
    Fabric whose processes share every α's samples (:mod:`jointdiff.sampling.distributed`); rank 0 scores and
    writes, the other ranks return no rows."""
    hp = model.hparams
    if not alphas:
        raise ValueError("--alphas is empty")
    for a in alphas:
        check_sampler_args(model, "joint", alpha=a, scale=0.0, steps=steps, eta=eta, classifier=None)
    check_targets(torch.tensor(list(classes)), hp.num_classes, hp.task)
    net = pick_network(model, weights)
    device = next(net.parameters()).device
    t0 = lambda x: torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # noqa: E731
    own_head = lambda x: net.classify(x, t0(x))  # noqa: E731
    rows = []
    # class-major order: sample k of class position c has global index c·num_per_class + k, and its noise is seeded
    # by (seed, index) for every α, so each α starts from the same chains (α=0 is their unconditional version)
    targets = torch.tensor(list(classes), device=device).repeat_interleave(num_per_class)
    for a in alphas:
        began = time.perf_counter()
        images = sharded_generate(fabric, model, "joint", len(targets), targets, alpha=a, direction=direction,
                                  seed=seed, batch_size=batch_size, weights=weights, progress=progress,
                                  clip_denoised=clip_denoised, steps=steps, eta=eta,
                                  respaced_alpha=respaced_alpha).to(device)
        if fabric is not None and not fabric.is_global_zero:
            continue
        seconds = time.perf_counter() - began
        row = {"alpha": float(a), **score(images, targets, hp.task, judge=judge, own_head=own_head,
                                          features=features, real_features=real_features), "seconds": seconds}
        if grids is not None:
            # one row per class, up to 10 samples each
            k = min(num_per_class, 10)
            pick = torch.cat([torch.arange(i * num_per_class, i * num_per_class + k) for i in range(len(classes))])
            row["grid"] = str(save_grid(images[pick].cpu(), grids / f"alpha_{a:g}.png", nrow=k))
            # every sample, as `jointdiff sample` writes them, so any score can be recomputed later
            row["npz"] = str(write_samples(grids / f"alpha_{a:g}.npz", images, targets))
        rows.append(row)
        print("  ".join(f"{key}={row[key]:.4g}" if isinstance(row.get(key), float) else f"{key}={row.get(key)}"
                        for key in COLUMNS if key in row), flush=True)
    return rows


def write_sweep(rows: list[dict], output: Path, meta: dict) -> dict[str, Path]:
    """CSV, Markdown table, JSON (rows + ``meta``) and a plot of P/R, FID and hit rate against α."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    paths = {k: output / f"alpha_sweep.{k}" for k in ("csv", "md", "json", "png")}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    paths["md"].write_text("\n".join(lines) + "\n")
    atomic_write_json({"rows": rows, **meta}, paths["json"])

    alphas = [r["alpha"] for r in rows]
    panels = [("precision / recall", ("precision", "recall")), ("FID", ("fid",)),
              ("class hit rate", ("judge_hit_rate", "own_head_hit_rate"))]
    panels = [(t, [k for k in keys if k in cols]) for t, keys in panels]
    panels = [(t, keys) for t, keys in panels if keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            ax.plot(alphas, [r.get(key, float("nan")) for r in rows], marker="o", label=key)
        ax.set_xlabel("α")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=130)
    plt.close(fig)
    return paths


def alpha_sweep(
    checkpoint: str,
    output: str = "alpha_sweep",
    alphas: list[float] = (0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 500.0, 1000.0),
    num_per_class: int = 100,
    classes: list[int] | None = None,
    judge: str | None = None,
    features: str | None = None,
    data: ImageDataModule | None = None,
    split: str = "test",
    max_real: int | None = None,
    direction: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    weights: str = "model",
    device: str = "cpu",
    devices: int = 1,
    num_nodes: int = 1,
    progress: bool = True,
    steps: int | Literal["all"] = SWEEP_STEPS,
    eta: float = RESPACED_ETA,
    clip_denoised: bool = False,
) -> list[dict]:
    """Sweep the joint sampler's α (default D10's list plus α=0, the unconditional chains).

    Args:
        checkpoint: a JointDiffusion with a classifier head (trained with noisy classifiers).
        output: folder for the table (CSV, Markdown, JSON), the plot and one sample grid per α.
        alphas: step sizes to try.
        num_per_class: samples per class and α.
        classes: classes to sample (default all).
        judge: independent classifier checkpoint (e.g. StandaloneClassifier) for the class hit rate.
        features: feature extractor for FID/precision/recall (``inception`` or ``classifier:<ckpt>``); needs --data.
        data: DataModule giving the real images for FID/PRD.
        split: which split of ``data`` is the real set (test, as the paper).
        max_real: use at most this many real images (the first ones of the split).
        direction: +1 (reference) or -1.
        seed: the seed every α starts from.
        batch_size: sampler batch.
        weights: ema | raw | model.
        device: cpu, cuda, … (with ``devices > 1``: the accelerator).
        devices, num_nodes: processes that share the samples of every α (Lightning Fabric, DDP; under SLURM one
            task per device); the rows are the same for any number of processes.
        progress: progress bars.
        steps: respaced steps of the joint sampler (η-DDIM, α per step as on the full grid; the default is the
            validated one, docs/sampling.md), or ``all`` for the full ancestral chain of T steps.
        eta: DDIM η on a respaced grid.
        clip_denoised: clamp x̂0 to [-1, 1] at every step (the reference does not).
    """
    from jointdiff.sampling.loading import judge_logits_fn

    if num_per_class < 1:
        raise ValueError("--num_per_class must be >= 1")
    if (features is None) != (data is None):
        raise ValueError("FID and precision/recall need both --features and --data (the real images)")
    fabric, model = load_on_processes(checkpoint, device, devices, num_nodes)
    device = str(model.device)
    hp = model.hparams
    if hp.task != "multiclass":
        raise ValueError("alpha-sweep samples per class; multi-label models are not supported by this command")
    classes = list(range(hp.num_classes)) if classes is None else list(classes)
    judge_fn = judge_logits_fn(judge, device) if judge else None
    feature_fn = real = None
    extractor_info = None
    if features is not None:
        from jointdiff.models.extractors import build_extractor

        extractor = build_extractor(features).to(device)
        extractor_info = extractor.describe()
        feature_fn = extractor
        data.setup("fit" if split in ("train", "val") else "test")
        dataset = getattr(data, f"{split}_set")
        n = len(dataset) if max_real is None else min(max_real, len(dataset))
        real_images = torch.stack([dataset[i][0] for i in range(n)]).to(device)
        real = batched(feature_fn, real_images)
    rows = run_alpha_sweep(model, alphas, classes, num_per_class, judge=judge_fn, features=feature_fn,
                           real_features=real, direction=direction, seed=seed, batch_size=batch_size,
                           weights=weights, grids=Path(output) / "grids", progress=progress, fabric=fabric,
                           steps=None if steps == "all" else steps, eta=eta, clip_denoised=clip_denoised)
    if fabric is not None and not fabric.is_global_zero:
        return rows
    meta = {"checkpoint": checkpoint, "judge": judge, "features": extractor_info, "num_real": None if real is None
            else len(real), "classes": classes, "num_per_class": num_per_class, "seed": seed,
            "direction": direction, "diffusion_steps": model.diffusion.num_steps,
            "steps": model.diffusion.num_steps if steps == "all" else steps,
            "eta": None if steps == "all" else eta, "clip_denoised": clip_denoised}
    paths = write_sweep(rows, Path(output), meta)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return rows
