"""Samples from a model with any of the project's samplers: argument checks, targets, batch size, and batched
generation across classes with per-sample seeds, on one process (:func:`generate`) or shared by the processes of a
job (:func:`sharded_generate`). The ``jointdiff sample`` run itself (loading, grids, sample file, record) is
:mod:`jointdiff.commands.sample`."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from jointdiff.diffusion.conditional import Alpha, RespacedAlpha, joint_conditional_sample, steer_features
from jointdiff.diffusion.ddim import ddim_sample, respaced_timesteps
from jointdiff.diffusion.engine import PerSampleNoise, initial_noise
from jointdiff.diffusion.guidance import classifier_guided_sample, guidance_gradient
from jointdiff.diffusion.samplers import ddpm_sample
from jointdiff.sampling.distributed import shard
from jointdiff.sampling.loading import (
    Weights,
    noisy_logits_fn,
    pick_network,
)
from jointdiff.tasks import check_targets

Sampler = Literal["ddpm", "ddim", "joint", "guidance"]
CONDITIONAL = ("joint", "guidance")


# targets ---------------------------------------------------------------------------------------------------------
def parse_targets(
    num_classes: int, task: str, classes: list[int] | None, attributes: list[str] | None
) -> list[torch.Tensor]:
    """One target per group: a class id (multiclass; all classes when ``classes`` is None) or a 0/1 vector
    (multilabel, from strings such as ``"0,1,1,0,…"`` or a text file with one vector per line)."""
    if task == "multilabel":
        if classes:
            raise ValueError("this model is multi-label: give --attributes (0/1 vectors), not --classes")
        if not attributes:
            raise ValueError(f"this model is multi-label: give --attributes, each a 0/1 vector of {num_classes} values")
        rows: list[str] = []
        for a in attributes:
            p = Path(a)
            rows.extend(line for line in p.read_text().splitlines() if line.strip()) if p.is_file() else rows.append(a)
        vectors = [torch.tensor([float(v) for v in r.replace(",", " ").split()]) for r in rows]
        return [check_targets(v[None], num_classes, task)[0] for v in vectors]
    if attributes:
        raise ValueError("this model is multi-class: give --classes, not --attributes")
    ids = list(range(num_classes)) if classes is None else list(classes)
    if not ids:
        raise ValueError("--classes is empty")
    check_targets(torch.tensor(ids), num_classes, task)
    return [torch.tensor(c) for c in ids]


# batch size ------------------------------------------------------------------------------------------------------
AUTO_BATCH_CPU = 64  # on CPU a larger batch buys no throughput (bench_sampling: per-image cost is flat in b)
AUTO_BATCH_LIMIT = 4096


def largest_fitting_batch(try_batch: Callable[[int], None], limit: int, start: int = 8) -> int:
    """The largest of ``start, 2·start, 4·start, …`` (capped at ``limit``) for which ``try_batch(b)`` runs without
    running out of device memory. Written here because Lightning's ``BatchSizeFinder`` searches training loops
    only; the search is the same doubling."""
    good, b = 0, min(start, limit)
    while True:
        try:
            try_batch(b)
        except torch.OutOfMemoryError:
            break
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        good = b
        if b >= limit:
            break
        b = min(2 * b, limit)
    if not good:
        raise RuntimeError(f"a batch of {min(start, limit)} samples does not fit in device memory")
    return good


def one_reverse_step(
    model, sampler: Sampler, target: torch.Tensor | None, classifier: tuple[Callable, int, str] | None,
    weights: Weights = "model",
) -> Callable[[int], None]:
    """``run(b)``: one reverse step of ``sampler`` at batch ``b`` on random x at i = T−1. A sampling loop keeps no
    graph across steps, so this is its peak memory."""
    hp, net = model.hparams, pick_network(model, weights)
    device = next(net.parameters()).device

    def run(b: int) -> None:
        x = torch.randn(b, hp.channels, hp.image_size, hp.image_size, device=device)
        t = torch.full((b,), model.diffusion.num_steps - 1, device=device, dtype=torch.long)
        y = None if target is None else target.to(device).expand(b, *target.shape)
        if sampler == "joint":
            with torch.enable_grad():  # x needs a graph so that the encoder's outputs have one (frozen weights)
                middle, skips = net.encode(x.requires_grad_(True), t)
            middle, skips, _ = steer_features(net, middle, skips, t, y, 1.0, hp.task)
            with torch.no_grad():
                net.unet.decode(middle, skips, t)
            return
        with torch.no_grad():
            net(x, t)
        if sampler == "guidance":
            fn, _, task = classifier
            guidance_gradient(fn, x, t, y, task)

    return run


def auto_batch_size(
    model, sampler: Sampler, num: int, target: torch.Tensor | None,
    classifier: tuple[Callable, int, str] | None = None, weights: Weights = "model",
) -> int:
    """``--batch_size auto``: on a GPU the largest batch (≤ ``num``) whose reverse step fits in memory; on CPU 64."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        return min(num, AUTO_BATCH_CPU)
    return largest_fitting_batch(one_reverse_step(model, sampler, target, classifier, weights),
                                 min(num, AUTO_BATCH_LIMIT))


# generation ------------------------------------------------------------------------------------------------------
def generate(
    model,
    sampler: Sampler,
    num: int | None = None,
    target: torch.Tensor | None = None,
    *,
    targets: torch.Tensor | None = None,
    alpha: Alpha = 200.0,
    direction: int = 1,
    scale: float = 1.0,
    classifier: tuple[Callable, int, str] | None = None,
    steps: int | None = None,
    eta: float = 0.0,
    respaced_alpha: RespacedAlpha = "same",
    generator: torch.Generator | None = None,
    seed: int | None = None,
    first_index: int = 0,
    batch_size: int = 64,
    weights: Weights = "model",
    progress: bool = False,
    clip_denoised: bool | None = None,
) -> torch.Tensor:
    """Samples (floats, (N, c, H, W)) in batches of ``batch_size``.

    What to draw: ``num`` samples of one ``target`` (None for ``ddpm``/``ddim``), or one sample per row of
    ``targets`` ((N,) class ids or (N, n) 0/1 vectors), so that one batch may hold several classes.

    Noise: with ``seed``, sample ``k`` draws all its noise from its own stream keyed by ``(seed, first_index
    + k)`` (:class:`~jointdiff.diffusion.engine.PerSampleNoise`): a sample does not depend on the batch size, the
    classes beside it or how many processes share the work. Otherwise every draw comes from ``generator`` in
    batch order (the reference's order).

    ``steps`` respaces ``ddim`` and ``joint`` (η-DDIM on ``steps`` of the T steps; α per step by
    ``respaced_alpha``). ``clip_denoised=None`` is each sampler's reference default: no clamping of x̂0, except
    guidance (clamped, as guided-diffusion's ``classifier_sample.py``).
    """
    if targets is None:
        if num is None:
            raise ValueError("give num (with an optional target) or targets")
        targets = None if target is None else target.expand(num, *target.shape)
    else:
        num = len(targets)
    clip = {} if clip_denoised is None else {"clip_denoised": clip_denoised}
    hp = model.hparams
    net = pick_network(model, weights)
    device = next(net.parameters()).device
    T = model.diffusion.num_steps
    timesteps = None if steps is None or steps == T else respaced_timesteps(T, steps)
    out = []
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        shape = (b, hp.channels, hp.image_size, hp.image_size)
        noise = generator if seed is None else PerSampleNoise(seed, range(first_index + start, first_index + start + b))
        y = None if targets is None else targets[start:start + b].to(device).clone()
        if sampler == "ddpm":
            x = ddpm_sample(net, model.diffusion, shape, device=device, generator=noise, progress=progress, **clip)
        elif sampler == "ddim":
            x_T = initial_noise(shape, noise, device)
            x = ddim_sample(net, model.diffusion, x_T, respaced_timesteps(T, steps or T), eta=eta, generator=noise,
                            progress=progress, **clip)
        elif sampler == "joint":
            x = joint_conditional_sample(net, model.diffusion, shape, y, alpha, direction=direction, task=hp.task,
                                         device=device, generator=noise, progress=progress, timesteps=timesteps,
                                         eta=eta, respaced_alpha=respaced_alpha, **clip)
        elif sampler == "guidance":
            if classifier is None:
                raise ValueError("the guidance sampler needs --classifier (a noise-aware classifier checkpoint)")
            fn, n, task = classifier
            x = classifier_guided_sample(net, fn, model.diffusion, shape, y, scale, num_classes=n, task=task,
                                         device=device, generator=noise, progress=progress, **clip)
        else:
            raise ValueError(f"unknown sampler {sampler!r}; choose ddpm, ddim, joint or guidance")
        out.append(x)
    return torch.cat(out)



def sharded_generate(fabric, model, sampler: str, total: int, targets: torch.Tensor | None, *, seed: int,
                     **kwargs) -> torch.Tensor:
    """``generate`` of ``total`` samples (one per row of ``targets`` when given), split over the processes of
    ``fabric`` (None: this process draws them all). Every process returns all samples, (total, c, H, W), on CPU."""
    if fabric is None:
        return generate(model, sampler, total, targets=targets, seed=seed, **kwargs).cpu()
    mine = shard(total, fabric.global_rank, fabric.world_size)
    hp = model.hparams
    per = math.ceil(total / fabric.world_size)
    block = torch.zeros(per, hp.channels, hp.image_size, hp.image_size, device=fabric.device)
    if len(mine):
        part_targets = None if targets is None else targets[mine.start:mine.stop]
        block[: len(mine)] = generate(model, sampler, len(mine), targets=part_targets, seed=seed,
                                      first_index=mine.start, **kwargs)
    gathered = fabric.all_gather(block)  # (world, per, c, H, W)
    return gathered.reshape(-1, *block.shape[1:])[:total].cpu()


def check_sampler_args(model, sampler: Sampler, *, alpha: Alpha, scale: float, steps: int | None, eta: float,
                       classifier: str | None) -> None:
    """Reject inconsistent arguments before anything is sampled."""
    hp = model.hparams
    if sampler == "joint":
        if not model.has_head:
            raise ValueError("--sampler joint needs a joint model with a classifier head (classifier_weight > 0); "
                             "this checkpoint is a vanilla DDPM: use --sampler guidance with a noise-aware classifier")
        from jointdiff.diffusion.conditional import alpha_schedule

        alpha_schedule(alpha, model.diffusion.num_steps)
        if hp.get("noisy_classifier", "off") == "off":
            print("warning: this joint model was trained without noisy classifiers (noisy_classifier=off); its head "
                  "sees out-of-distribution features on noisy x_t, so conditional sampling is unreliable "
                  "(docs/design.md §5.1)")
    if sampler == "guidance" and classifier is None:
        raise ValueError("--sampler guidance needs --classifier PATH (a noise-aware classifier checkpoint)")
    if sampler == "guidance" and not scale >= 0:
        raise ValueError(f"--scale must be >= 0, got {scale}")
    if sampler in ("ddim", "joint"):
        respaced_timesteps(model.diffusion.num_steps, steps or model.diffusion.num_steps)
        if eta < 0:
            raise ValueError(f"--eta must be >= 0, got {eta}")
    elif steps is not None and steps != model.diffusion.num_steps:
        raise ValueError(f"--steps applies to --sampler ddim and joint; {sampler} runs all "
                         f"{model.diffusion.num_steps} steps (D22)")


def guidance_classifier(model, classifier: str, device: str) -> tuple:
    """``(noisy logits fn, classes, task)`` of a noise-aware classifier checkpoint that fits ``model``."""
    hp = model.hparams
    fn, n, task, clf = noisy_logits_fn(classifier, device)
    if n != hp.num_classes or task != hp.task:
        raise ValueError(f"classifier {classifier} has {n} {task} outputs, the model {hp.num_classes} {hp.task}")
    if hasattr(clf, "check_matches"):
        clf.check_matches(model.diffusion)
    return fn, n, task


def requested_targets(model, sampler: Sampler, num: int, classes: list[int] | None,
                      attributes: list[str] | None) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
    """The requested groups (one target each; ``[None]`` for an unconditional sampler) and every sample's target,
    ``num`` per group in group order (``None`` when unconditional)."""
    hp = model.hparams
    if sampler not in CONDITIONAL:
        if classes or attributes:
            raise ValueError(f"--sampler {sampler} is unconditional; --classes/--attributes need joint or guidance")
        return [None], None
    groups = parse_targets(hp.num_classes, hp.task, classes, attributes)
    return groups, torch.stack([g for g in groups for _ in range(num)])
