"""Visual counterfactual explanations of real images with a joint model (docs/design.md §6, D18): load the images (a
DataModule split or image files), choose the requests, run the conditional sampler from ``q(x_{n−1} | x0)``, and
write the figure and the per-image record. The command is ``jointdiff counterfactual``
(:mod:`jointdiff.commands.counterfactual`, usage there)."""

from __future__ import annotations

from pathlib import Path

import torch

from jointdiff.data.base import ImageDataModule
from jointdiff.diffusion.conditional import alpha_schedule, counterfactual, noise_steps
from jointdiff.diffusion.engine import PerSampleNoise
from jointdiff.files import atomic_write_json
from jointdiff.images import from_uint8, to_unit_interval
from jointdiff.sampling.distributed import shard
from jointdiff.sampling.loading import judge_logits_fn, load_on_processes, pick_network
from jointdiff.tasks import check_targets


def load_image_files(files: list[str], channels: int, image_size: int) -> torch.Tensor:
    """Image files → (N, channels, image_size, image_size) floats in [-1, 1] (resized with antialiasing)."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.io import ImageReadMode, decode_image

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    out = []
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"image file not found: {f}")
        img = decode_image(f, mode=mode)
        if img.shape[-2:] != (image_size, image_size):
            img = TF.resize(img, [image_size, image_size], antialias=True)
        out.append(from_uint8(img))
    return torch.stack(out)


def dataset_images(data: ImageDataModule, split: str, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in [-1, 1], labels) of ``indices`` in the DataModule's ``split`` (train, val or test)."""
    data.setup("fit" if split in ("train", "val") else "test")
    dataset = getattr(data, f"{split}_set", None)
    if dataset is None:
        raise ValueError(f"{type(data).__name__} has no {split} split")
    bad = [i for i in indices if not 0 <= i < len(dataset)]
    if bad:
        raise ValueError(f"indices {bad} are outside the {split} split (0..{len(dataset) - 1})")
    xs, ys = zip(*(dataset[i] for i in indices), strict=True)
    return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys])


def requested_targets(
    num_classes: int, task: str, labels: torch.Tensor | None, target: int | None, flip_attribute: int | None, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(targets, focus, value)``: the sampler's targets, and per image the output index the explanation is about
    and the value requested for it.

    multiclass: ``--target`` for every image, default "the other class" of a binary task (needs true labels);
    focus = the target class, value 1. multilabel (docs/design.md §6, CelebA): the image's true attribute vector with
    attribute ``--flip_attribute`` flipped, the others kept (needs dataset images).
    """
    if task == "multilabel":
        if flip_attribute is None or labels is None:
            raise ValueError("multi-label counterfactuals flip one attribute of dataset images: give --data and "
                             "--flip_attribute K (the other attributes keep the image's true values)")
        if target is not None:
            raise ValueError("--target is for multi-class models; use --flip_attribute")
        if not 0 <= flip_attribute < num_classes:
            raise ValueError(f"--flip_attribute must be in 0..{num_classes - 1}, got {flip_attribute}")
        targets = labels.float().clone()
        targets[:, flip_attribute] = 1 - targets[:, flip_attribute]
        check_targets(targets, num_classes, task)
        return targets, torch.full((n,), flip_attribute), targets[:, flip_attribute].long()
    if flip_attribute is not None:
        raise ValueError("--flip_attribute is for multi-label models; use --target")
    if target is not None:
        targets = check_targets(torch.tensor([target]), num_classes, task).expand(n).clone()
    elif num_classes != 2:
        raise ValueError(f"--target is required: the model has {num_classes} classes, so there is no single "
                         "other class")
    elif labels is None:
        raise ValueError("--target is required for --files (their true class is unknown, so 'the other class' is too)")
    else:
        targets = 1 - labels.long()
    return targets, targets.clone(), torch.ones(n, dtype=torch.long)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return logits.sigmoid() if task == "multilabel" else logits.softmax(1)


def focus_probability(probs: torch.Tensor, focus: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(N,) probability of the requested value of each image's focus output (class, or attribute = value)."""
    p = probs.gather(1, focus[:, None].long())[:, 0]
    return torch.where(value.bool(), p, 1 - p)


def reached(probs: torch.Tensor, focus: torch.Tensor, value: torch.Tensor, task: str) -> torch.Tensor:
    """(N,) bool: the classifier's decision equals the request (argmax = class; attribute thresholded at 0.5)."""
    if task == "multilabel":
        return focus_probability(probs, focus, value) > 0.5
    return probs.argmax(1) == focus


def save_figure(original, noised, counterfactual_images, p_before, p_after, requests, titles, path: Path):
    """Rows: original / noised / counterfactual / |difference| (sum over channels); titles: the request and the
    classifier's probability of it before → after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = original.shape[0]
    fig, axes = plt.subplots(4, n, figsize=(1.8 * n + 1.2, 8.4), squeeze=False, gridspec_kw={"hspace": 0.45})
    diff = (counterfactual_images - original).abs().sum(dim=1)  # (N, H, W)
    vmax = float(diff.max()) or 1.0

    def show(ax, img):
        img = to_unit_interval(img).permute(1, 2, 0).numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)

    for j in range(n):
        show(axes[0, j], original[j])
        show(axes[1, j], noised[j])
        show(axes[2, j], counterfactual_images[j])
        im = axes[3, j].imshow(diff[j].numpy(), cmap="magma", vmin=0, vmax=vmax)
        axes[0, j].set_title(f"{titles[j]}\nP({requests[j]})={p_before[j]:.2f}", fontsize=7)
        axes[2, j].set_title(f"→ {requests[j]}\nP={p_after[j]:.2f}", fontsize=7)
        for i in range(4):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    for i, label in enumerate(["original", "noised", "counterfactual", "|difference|"]):
        axes[i, 0].set_ylabel(label, fontsize=8)
    fig.colorbar(im, ax=axes[3, :].tolist(), fraction=0.02, pad=0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def sharded_counterfactual(fabric, net, diffusion, x0: torch.Tensor, targets: torch.Tensor, alpha, noise_fraction,
                           *, seed: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~jointdiff.diffusion.conditional.counterfactual` of every image, image k seeded by (seed, k), its
    images split over the processes of ``fabric`` (None: this process does them all) and gathered in order."""
    if fabric is None:
        return counterfactual(net, diffusion, x0, targets, alpha, noise_fraction,
                              generator=PerSampleNoise(seed, range(len(x0))), **kwargs)
    mine = shard(len(x0), fabric.global_rank, fabric.world_size)
    per = -(-len(x0) // fabric.world_size)
    block = torch.zeros(2, per, *x0.shape[1:], device=x0.device)
    if len(mine):
        noised, cf = counterfactual(net, diffusion, x0[mine.start:mine.stop], targets[mine.start:mine.stop], alpha,
                                    noise_fraction, generator=PerSampleNoise(seed, mine), **kwargs)
        block[0, : len(mine)], block[1, : len(mine)] = noised, cf
    gathered = fabric.all_gather(block)  # (world, 2, per, c, H, W)
    both = gathered.transpose(0, 1).reshape(2, -1, *x0.shape[1:])[:, : len(x0)]
    return both[0], both[1]


def check_explainer(model, checkpoint: str, alpha: float | list[float]) -> None:
    """A joint model with a head and a valid α; warns when its head never saw noisy inputs."""
    if not model.has_head:
        raise ValueError(f"{checkpoint} has no classifier head (classifier_weight=0): counterfactuals need a "
                         "joint model")
    alpha_schedule(alpha, model.diffusion.num_steps)
    if model.hparams.get("noisy_classifier", "off") == "off":
        print("warning: this joint model was trained without noisy classifiers; counterfactuals are unreliable "
              "(docs/design.md §5.1)")


def input_images(hp, files: list[str] | None, data: ImageDataModule | None, split: str,
                 indices: list[int] | None) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """(images in [-1, 1], their labels or ``None`` for files, a source name per image)."""
    if files is not None:
        return load_image_files(files, hp.channels, hp.image_size), None, [str(f) for f in files]
    for key in ("image_size", "channels", "num_classes"):
        if getattr(data, key) != hp[key]:
            raise ValueError(f"data.{key}={getattr(data, key)} does not match the model's {key}={hp[key]}")
    indices = list(range(8)) if indices is None else list(indices)
    x0, labels = dataset_images(data, split, indices)
    return x0, labels, [f"{type(data).__name__}:{split}[{i}]" for i in indices]


def request_names(names: list[str], focus: torch.Tensor, value: torch.Tensor, task: str) -> list[str]:
    """What each image is explained toward, in words: the class, or ``attribute=value`` (multi-label)."""
    if task == "multilabel":
        return [f"{names[int(k)]}={int(v)}" for k, v in zip(focus, value, strict=True)]
    return [names[int(k)] for k in focus]


def image_entry(j: int, source: str, requests, targets, labels, p_request, probs, judged, x0, cf) -> dict:
    """Image ``j``'s entry of ``counterfactual.json``: request, probabilities before/after, mean change."""
    entry = {
        "source": source, "request": requests[j], "target": targets[j].tolist(),
        "p_request_before": float(p_request[0][j]), "p_request_after": float(p_request[1][j]),
        "probs_before": probs[0][j].tolist(), "probs_after": probs[1][j].tolist(),
        "mean_abs_difference": float((cf[j] - x0[j]).abs().mean()),
    }
    if labels is not None:
        entry["label"] = labels[j].tolist()
    if judged is not None:
        entry["judge_probs_before"], entry["judge_probs_after"] = judged[0][j].tolist(), judged[1][j].tolist()
    return entry


def run_counterfactual(
    checkpoint: str,
    output: str = "counterfactual",
    data: ImageDataModule | None = None,
    split: str = "test",
    indices: list[int] | None = None,
    files: list[str] | None = None,
    noise_fraction: float = 0.2,
    target: int | None = None,
    flip_attribute: int | None = None,
    alpha: float | list[float] = 200.0,
    direction: int = 1,
    seed: int = 0,
    weights: str = "model",
    judge: str | None = None,
    class_names: list[str] | None = None,
    device: str = "cpu",
    devices: int = 1,
    num_nodes: int = 1,
    progress: bool = True,
) -> dict | None:
    """Counterfactual explanations of real images with a joint model trained with noisy classifiers.

    Args:
        checkpoint: a JointDiffusion checkpoint with a classifier head.
        output: folder for ``counterfactual.png`` and ``counterfactual.json``.
        data: the DataModule to take images from (e.g. ``MalariaDataModule``; ``--data.root`` or
            ``JOINTDIFF_DATA_ROOT`` locate its files).
        split: train, val or test.
        indices: positions in that split (default the first 8).
        files: image files instead of a dataset (resized to the model's size; needs ``--target``).
        noise_fraction: share f of the T steps the image is noised and denoised over, in [0, 1] (default 0.2,
            the paper's "20% of noise"; f=0 returns the image).
        target: the class to explain toward (multi-class); default the other class of a binary task.
        flip_attribute: multi-label models: the attribute to flip (the others keep the image's true values).
        alpha: step size of the conditional sampler (D18: start at 200), or one value per step.
        direction: +1 (reference, D11) or -1.
        seed: image k's forward and step noise come from its own stream keyed by (seed, k): paired,
            reproducible figures, the same for any number of processes.
        weights: ema | raw | model (the checkpoint's eval_weights).
        judge: an independent classifier checkpoint whose probabilities are also reported.
        class_names: names for the figure, in class order (default the DataModule's ``class_names`` or the ids).
        device: cpu, cuda, … (with ``devices > 1``: the accelerator).
        devices, num_nodes: processes that share the images (Lightning Fabric, DDP; under SLURM one task per
            device); rank 0 writes the figure and the record.
        progress: show a progress bar.
    """
    noise_steps(noise_fraction, 2)  # range check before anything is loaded
    if (files is None) == (data is None):
        raise ValueError("give exactly one of --data (with --split/--indices) or --files")
    fabric, model = load_on_processes(checkpoint, device, devices, num_nodes)
    device = str(model.device)
    hp = model.hparams
    check_explainer(model, checkpoint, alpha)
    x0, labels, sources = input_images(hp, files, data, split, indices)
    targets, focus, value = requested_targets(hp.num_classes, hp.task, labels, target, flip_attribute, len(x0))
    names = class_names or getattr(data, "class_names", None) or [str(c) for c in range(hp.num_classes)]
    if len(names) != hp.num_classes:
        raise ValueError(f"--class_names needs {hp.num_classes} names, got {len(names)}")
    requests = request_names(names, focus, value, hp.task)

    net = pick_network(model, weights)
    x0, targets = x0.to(device), targets.to(device)
    noised, cf = sharded_counterfactual(fabric, net, model.diffusion, x0, targets, alpha, noise_fraction,
                                        direction=direction, task=hp.task, seed=seed, progress=progress)
    if fabric is not None and not fabric.is_global_zero:
        return None
    t0 = torch.zeros(x0.shape[0], dtype=torch.long, device=device)
    with torch.no_grad():
        before, after = (probabilities(net.classify(x, t0), hp.task).cpu() for x in (x0, cf))
    judged = None
    if judge:
        judge_fn = judge_logits_fn(judge, device)
        judged = [probabilities(judge_fn(x), hp.task).cpu() for x in (x0, cf)]

    out = Path(output)
    if labels is None or hp.task == "multilabel":
        titles = [s.rsplit(":", 1)[-1] for s in sources]
    else:
        titles = [f"{s.rsplit(':', 1)[-1]} ({names[int(y)]})" for s, y in zip(sources, labels, strict=True)]
    p_before, p_after = focus_probability(before, focus, value), focus_probability(after, focus, value)
    figure = save_figure(x0.cpu(), noised.cpu(), cf.cpu(), p_before, p_after, requests, titles,
                         out / "counterfactual.png")
    images = [image_entry(j, src, requests, targets, labels, (p_before, p_after), (before, after), judged, x0, cf)
              for j, src in enumerate(sources)]
    record = {
        "checkpoint": str(checkpoint), "figure": str(figure), "noise_fraction": noise_fraction,
        "reverse_steps": noise_steps(noise_fraction, model.diffusion.num_steps),
        "diffusion_steps": model.diffusion.num_steps, "alpha": alpha, "direction": direction, "seed": seed,
        "weights": weights, "judge": judge, "class_names": names, "images": images,
        "reached_before_own_head": float(reached(before, focus, value, hp.task).float().mean()),
        "reached_after_own_head": float(reached(after, focus, value, hp.task).float().mean()),
    }
    if judged is not None:
        record["reached_before_judge"] = float(reached(judged[0], focus, value, hp.task).float().mean())
        record["reached_after_judge"] = float(reached(judged[1], focus, value, hp.task).float().mean())
    atomic_write_json(record, out / "counterfactual.json")
    print(f"wrote {figure} and {out / 'counterfactual.json'}; share of images the model's head assigns to the "
          f"requested class: {record['reached_before_own_head']:.2f} before → {record['reached_after_own_head']:.2f} "
          "after")
    return record
