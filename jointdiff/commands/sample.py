"""``jointdiff sample``: draw samples from a trained checkpoint with any of the project's samplers.

    jointdiff sample --checkpoint runs/.../last.ckpt --sampler joint --alpha 200 --num 64 --classes [0,3]
    jointdiff sample --checkpoint ddpm.ckpt --sampler guidance --classifier noisy_clf.ckpt --scale 2
    jointdiff sample --checkpoint ddpm.ckpt --sampler ddim --steps 50 --num 256

Samplers: ``ddpm`` (ancestral, all T steps, unconditional), ``ddim`` (``--steps`` respaced steps, ``--eta``),
``joint`` (the joint model's conditional sampler, spec §5.1, needs a head: α, direction) and ``guidance``
(Dhariwal & Nichol with an external noise-aware classifier, spec §5.3: scale s). Writes into ``--output``:
``class_<k>.png`` grids (one per requested class or attribute vector; ``samples.png`` when unconditional),
``samples.npz`` (``arr_0`` uint8 (N, H, W, c) as guided-diffusion's scripts write, ``arr_1`` the requested
targets) and ``sample.json`` (arguments, paths, class hit rates).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from jointdiff.callbacks.samples import save_grid
from jointdiff.diffusion.conditional import Alpha, joint_conditional_sample, steered_features
from jointdiff.diffusion.ddim import ddim_sample, respaced_timesteps
from jointdiff.diffusion.guidance import classifier_guided_sample, guidance_gradient
from jointdiff.diffusion.samplers import ddpm_sample, to_uint8
from jointdiff.diffusion.targets import check_targets, hit_rate
from jointdiff.files import atomic_write_json
from jointdiff.models.checkpoints import load_model

Sampler = Literal["ddpm", "ddim", "joint", "guidance"]
Weights = Literal["ema", "raw", "model"]
CONDITIONAL = ("joint", "guidance")


# loading ---------------------------------------------------------------------------------------------------------
def load_diffusion_model(checkpoint: str, device: str = "cpu"):
    """A :class:`~jointdiff.models.joint.JointDiffusion` (joint model or, with λ=0, vanilla DDPM) in eval mode."""
    from jointdiff.models.joint import JointDiffusion

    return load_model(checkpoint, expected=JointDiffusion, map_location=device).to(device)


def pick_network(model, weights: Weights = "model"):
    """The network to sample with: ``ema``, ``raw`` or ``model`` (the checkpoint's own ``eval_weights``)."""
    if weights == "model":
        net = model.eval_network
    elif weights == "ema":
        net = model.ema.module
    elif weights == "raw":
        net = model.network
    else:
        raise ValueError(f"weights must be ema, raw or model, got {weights!r}")
    return net.eval()


def noisy_logits_fn(checkpoint: str, device: str = "cpu") -> tuple[Callable, int, str, object]:
    """``(logits_fn(x_t, t), num_classes, task, module)`` of a noise-aware classifier checkpoint for guidance: a
    :class:`~jointdiff.models.noise_aware.NoiseAwareClassifier` (its ``network``), or any project model with a
    classifier head that was trained on noisy inputs (its ``eval_network.classify``)."""
    module = load_model(checkpoint, map_location=device).to(device)
    hp = module.hparams
    if type(module).__name__ == "NoiseAwareClassifier":
        fn = module.network.eval()
    elif hasattr(module, "eval_network") and getattr(module.eval_network, "head", None) is not None:
        fn = module.eval_network.eval().classify
        if hp.get("noisy_classifier", "off") == "off":
            print(f"warning: {checkpoint} was trained on clean images only (noisy_classifier=off); its gradients on "
                  "noisy x_t are out of distribution for guidance")
    else:
        raise ValueError(f"{checkpoint} holds a {type(module).__name__}, not a classifier usable for guidance "
                         "(train a NoiseAwareClassifier)")
    return fn, int(hp["num_classes"]), hp.get("task", "multiclass"), module


def judge_logits_fn(checkpoint: str, device: str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """An independent classifier's logits on clean images (step 0), e.g. a StandaloneClassifier checkpoint."""
    from jointdiff.metrics.extractors import ClassifierFeatures

    features = ClassifierFeatures(checkpoint).to(device)
    return lambda x: features.logits(x)


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
            middle, skips, _ = steered_features(net, x, t, y, 1.0, 1, hp.task)
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
    num: int,
    target: torch.Tensor | None = None,
    *,
    alpha: Alpha = 200.0,
    direction: int = 1,
    scale: float = 1.0,
    classifier: tuple[Callable, int, str] | None = None,
    steps: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    weights: Weights = "model",
    progress: bool = False,
    clip_denoised: bool | None = None,
) -> torch.Tensor:
    """``num`` samples (floats, (num, c, H, W)) of ``target`` (None for ``ddpm``/``ddim``) in batches.
    ``clip_denoised=None`` is each sampler's reference default: no clamping of x̂0, except guidance (clamped, as
    guided-diffusion's ``classifier_sample.py``)."""
    clip = {} if clip_denoised is None else {"clip_denoised": clip_denoised}
    hp = model.hparams
    net = pick_network(model, weights)
    device = next(net.parameters()).device
    out = []
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        shape = (b, hp.channels, hp.image_size, hp.image_size)
        y = None if target is None else target.to(device).expand(b, *target.shape).clone()
        if sampler == "ddpm":
            x = ddpm_sample(net, model.diffusion, shape, device=device, generator=generator, progress=progress, **clip)
        elif sampler == "ddim":
            timesteps = respaced_timesteps(model.diffusion.num_steps, steps or model.diffusion.num_steps)
            x_T = torch.randn(shape, device=device, generator=generator)
            x = ddim_sample(net, model.diffusion, x_T, timesteps, eta=eta, generator=generator, progress=progress,
                            **clip)
        elif sampler == "joint":
            x = joint_conditional_sample(net, model.diffusion, shape, y, alpha, direction=direction, task=hp.task,
                                         device=device, generator=generator, progress=progress, **clip)
        elif sampler == "guidance":
            if classifier is None:
                raise ValueError("the guidance sampler needs --classifier (a noise-aware classifier checkpoint)")
            fn, n, task = classifier
            x = classifier_guided_sample(net, fn, model.diffusion, shape, y, scale, num_classes=n, task=task,
                                         device=device, generator=generator, progress=progress, **clip)
        else:
            raise ValueError(f"unknown sampler {sampler!r}; choose ddpm, ddim, joint or guidance")
        out.append(x)
    return torch.cat(out)


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
                  "sees out-of-distribution features on noisy x_t, so conditional sampling is unreliable (spec §5.1)")
    if sampler == "guidance" and classifier is None:
        raise ValueError("--sampler guidance needs --classifier PATH (a noise-aware classifier checkpoint)")
    if sampler == "guidance" and not scale >= 0:
        raise ValueError(f"--scale must be >= 0, got {scale}")
    if sampler == "ddim":
        respaced_timesteps(model.diffusion.num_steps, steps or model.diffusion.num_steps)
        if eta < 0:
            raise ValueError(f"--eta must be >= 0, got {eta}")
    elif steps is not None and steps != model.diffusion.num_steps:
        raise ValueError(f"--steps applies to --sampler ddim only; {sampler} runs all {model.diffusion.num_steps} "
                         "steps (spec D22)")


def sample(
    checkpoint: str,
    output: str = "samples",
    sampler: Sampler = "joint",
    num: int = 64,
    classes: list[int] | None = None,
    attributes: list[str] | None = None,
    alpha: float | list[float] = 200.0,
    direction: int = 1,
    scale: float = 1.0,
    classifier: str | None = None,
    steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int | Literal["auto"] = 64,
    weights: Weights = "model",
    clip_denoised: bool | None = None,
    judge: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Sample from a JointDiffusion checkpoint (a joint model, or a vanilla DDPM with classifier_weight 0).

    Args:
        checkpoint: the model's ``.ckpt`` (from ``jointdiff fit``).
        output: folder for the PNG grids, ``samples.npz`` and ``sample.json``.
        sampler: ddpm | ddim (unconditional) | joint | guidance (conditional).
        num: samples per requested class or attribute vector (the total for unconditional samplers).
        classes: class ids to sample (multi-class; conditional samplers; default every class).
        attributes: 0/1 vectors ("1,0,1,…") or text files with one vector per line (multi-label models).
        alpha: step size α of the joint sampler: one value, or one per diffusion step (index = step).
        direction: +1 (reference: ascent on the target-class CE, spec D11) or -1.
        scale: gradient scale s of classifier guidance.
        classifier: noise-aware classifier checkpoint for ``guidance``.
        steps: respaced steps for ``ddim`` (default all T).
        eta: DDIM η (0 = deterministic).
        seed: seeds the one generator all noise is drawn from (same seed, same starting noise).
        batch_size: samples per sampler call; ``auto`` fills the device (the largest batch whose reverse step
            fits in GPU memory, found by doubling; 64 on CPU) and records the choice in ``sample.json``.
        weights: ema | raw | model (the checkpoint's ``eval_weights``).
        clip_denoised: clamp x̂0 to [-1, 1] at every step. Default: each sampler's reference behaviour (no clamping;
            clamped for guidance, as guided-diffusion's ``classifier_sample.py``).
        judge: an independent classifier checkpoint (e.g. StandaloneClassifier) to report the class hit rate.
        device: cpu, cuda, …
        progress: show progress bars.
    """
    if num < 1 or (batch_size != "auto" and batch_size < 1):
        raise ValueError("--num and --batch_size must be >= 1 (or --batch_size auto)")
    model = load_diffusion_model(checkpoint, device)
    hp = model.hparams
    check_sampler_args(model, sampler, alpha=alpha, scale=scale, steps=steps, eta=eta, classifier=classifier)
    guide = None
    if sampler == "guidance":
        fn, n, task, clf = noisy_logits_fn(classifier, device)
        if n != hp.num_classes or task != hp.task:
            raise ValueError(f"classifier {classifier} has {n} {task} outputs, the model {hp.num_classes} {hp.task}")
        if hasattr(clf, "check_matches"):
            clf.check_matches(model.diffusion)
        guide = (fn, n, task)
    conditional = sampler in CONDITIONAL
    if not conditional and (classes or attributes):
        raise ValueError(f"--sampler {sampler} is unconditional; --classes/--attributes need joint or guidance")
    groups = parse_targets(hp.num_classes, hp.task, classes, attributes) if conditional else [None]
    judge_fn = judge_logits_fn(judge, device) if judge else None

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    images, targets, record = [], [], {"groups": []}
    began = time.perf_counter()
    if batch_size == "auto":
        batch_size = auto_batch_size(model, sampler, num, groups[0], guide, weights)
        print(f"--batch_size auto: {batch_size}")
    for k, target in enumerate(groups):
        x = generate(model, sampler, num, target, alpha=alpha, direction=direction, scale=scale, classifier=guide,
                     steps=steps, eta=eta, generator=generator, batch_size=batch_size, weights=weights,
                     progress=progress, clip_denoised=clip_denoised)
        if target is None:
            name = "samples"
        else:
            name = f"class_{int(target)}" if hp.task == "multiclass" else f"attributes_{k}"
        grid = save_grid(x, out / f"{name}.png")
        entry = {"name": name, "grid": str(grid), "num": len(x)}
        if target is not None:
            y = target.expand(len(x), *target.shape).to(x.device)
            entry["target"] = target.tolist()
            if model.has_head:
                t0 = torch.zeros(len(x), dtype=torch.long, device=x.device)
                with torch.no_grad():
                    head = pick_network(model, weights).classify(x, t0)
                entry["own_head_hit_rate"] = hit_rate(head, y, hp.task)
            if judge_fn is not None:
                entry["judge_hit_rate"] = hit_rate(judge_fn(x), y, hp.task)
            targets.append(y.cpu())
        images.append(x.cpu())
        record["groups"].append(entry)
        print(f"{name}: {grid}" + "".join(f"  {k}={v:.3f}" for k, v in entry.items() if k.endswith("hit_rate")))
    x = torch.cat(images)
    arrays = {"arr_0": to_uint8(x).permute(0, 2, 3, 1).numpy()}
    if targets:
        arrays["arr_1"] = torch.cat(targets).numpy()
    np.savez(out / "samples.npz", **arrays)
    record.update(
        checkpoint=str(checkpoint), sampler=sampler, num=num, seed=seed, weights=weights, npz=str(out / "samples.npz"),
        batch_size=batch_size, clip_denoised=clip_denoised,
        alpha=alpha if sampler == "joint" else None, direction=direction if sampler == "joint" else None,
        scale=scale if sampler == "guidance" else None, classifier=classifier, judge=judge,
        steps=steps if sampler == "ddim" else model.diffusion.num_steps, eta=eta if sampler == "ddim" else None,
        seconds=time.perf_counter() - began,
    )
    if judge_fn is not None and targets:
        record["judge_hit_rate"] = float(np.mean([g["judge_hit_rate"] for g in record["groups"]]))
    atomic_write_json(record, out / "sample.json")
    print(f"wrote {out / 'samples.npz'} and {out / 'sample.json'}")
    return record


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    CLI(sample, args=argv, as_positional=False)


if __name__ == "__main__":  # pragma: no cover
    import sys

    main(sys.argv[1:])
