"""What a trained PDAE is used for (docs/design.md §13.3–13.4): reconstruction through DDIM inversion, interpolation,
attribute manipulation with a linear classifier on ``z``, and the linear probe of ``z``. Pure functions of a
:class:`~jointdiff.models.pdae.PDAE` and tensors; the CLI subcommands (``jointdiff reconstruct|interpolate|
manipulate``) are thin wrappers around them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchmetrics.functional as TMF
from torch import nn
from tqdm.auto import tqdm

from jointdiff.data.semisupervised import labelled_mask
from jointdiff.images import to_unit_interval
from jointdiff.models.pdae import PDAE, DDIMShift


# metrics --------------------------------------------------------------------------------------------------------
def reconstruction_errors(x: torch.Tensor, x_rec: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image MSE and SSIM on [0, 1] images (docs/design.md §13.3: SSIM with an 11×11 Gaussian window, σ = 1.5; the
    torchmetrics implementation). x, x_rec: (B, c, H, W) in [-1, 1] → {"mse": (B,), "ssim": (B,)}."""
    a, b = to_unit_interval(x_rec), to_unit_interval(x)
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    ssim = TMF.structural_similarity_index_measure(
        a, b, data_range=1.0, gaussian_kernel=True, sigma=1.5, kernel_size=11, reduction="none"
    )
    return {"mse": mse, "ssim": ssim}


# reconstruction -------------------------------------------------------------------------------------------------
@dataclass
class ReconstructionSettings:
    inversion_steps: int = 100
    decode_steps: int = 100
    clip: bool = True  # clamp x̂0 while decoding (the reference does)
    clip_inversion: bool = True  # clamp x̂0 while inverting (the reference does; D30)
    shift: DDIMShift = "sqrt_one_minus_alpha_bar"  # DDIM's guidance coefficient (D28)


@torch.no_grad()
def reconstruct(
    model: PDAE, x0: torch.Tensor, settings: ReconstructionSettings, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Reconstructions of one batch x0 (B, c, H, W) in [-1, 1]:

    - ``pdae``: z = E(x0); x_T by DDIM inversion with the z-shifted ε̂; DDIM decoding from x_T with the same z;
    - ``pdae_random_xT``: decoding from x_T ~ N(0, I) with the same z (what z alone carries);
    - ``ddim``: the pre-trained DPM alone, DDIM inversion then decoding (the "DDIM" baseline of PDAE's Table 1).
    """
    z = model.encode(x0)
    shifted = model.eps_fn(z, settings.shift)
    x_T = model.invert(shifted, x0, settings.inversion_steps, settings.clip_inversion)
    out = {"z": z, "x_T": x_T, "pdae": model.decode(shifted, x_T, settings.decode_steps, settings.clip)}
    noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    out["pdae_random_xT"] = model.decode(shifted, noise, settings.decode_steps, settings.clip)
    base = model.base_eps_fn()
    base_T = model.invert(base, x0, settings.inversion_steps, settings.clip_inversion)
    out["ddim"] = model.decode(base, base_T, settings.decode_steps, settings.clip)
    return out


# interpolation --------------------------------------------------------------------------------------------------
def slerp(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """Spherical interpolation per example, the angle taken between the flattened tensors (docs/design.md §13.3)."""
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (F.normalize(fa, dim=1) * F.normalize(fb, dim=1)).sum(dim=1).clamp(-1.0, 1.0)
    theta = torch.acos(cos)[:, None]
    sin = torch.sin(theta)
    # sin(θ) → 0 (parallel codes): fall back to linear interpolation, the limit of the formula
    safe = sin.abs() > 1e-6
    wa = torch.where(safe, torch.sin((1 - lam) * theta) / torch.where(safe, sin, 1.0), torch.full_like(sin, 1 - lam))
    wb = torch.where(safe, torch.sin(lam * theta) / torch.where(safe, sin, 1.0), torch.full_like(sin, lam))
    return (wa * fa + wb * fb).reshape(a.shape)


@torch.no_grad()
def interpolate(
    model: PDAE, x_a: torch.Tensor, x_b: torch.Tensor, lambdas: list[float], settings: ReconstructionSettings
) -> torch.Tensor:
    """(B, L, c, H, W): for each pair, decodings of ``(slerp(x_T^a, x_T^b; λ), lerp(z^a, z^b; λ))``."""
    z_a, z_b = model.encode(x_a), model.encode(x_b)
    xT_a = model.invert(model.eps_fn(z_a, settings.shift), x_a, settings.inversion_steps, settings.clip_inversion)
    xT_b = model.invert(model.eps_fn(z_b, settings.shift), x_b, settings.inversion_steps, settings.clip_inversion)
    frames = []
    for lam in lambdas:
        z = torch.lerp(z_a, z_b, lam)
        frames.append(model.decode(model.eps_fn(z, settings.shift), slerp(xT_a, xT_b, lam), settings.decode_steps,
                                   settings.clip))
    return torch.stack(frames, dim=1)


@torch.no_grad()
def interpolate_base(
    model: PDAE, x_a: torch.Tensor, x_b: torch.Tensor, lambdas: list[float], settings: ReconstructionSettings
) -> torch.Tensor:
    """The pre-trained DPM's own interpolation for comparison: slerp of its DDIM codes, no latent."""
    base = model.base_eps_fn()
    xT_a = model.invert(base, x_a, settings.inversion_steps, settings.clip_inversion)
    xT_b = model.invert(base, x_b, settings.inversion_steps, settings.clip_inversion)
    frames = [model.decode(base, slerp(xT_a, xT_b, lam), settings.decode_steps, settings.clip) for lam in lambdas]
    return torch.stack(frames, dim=1)


# latents and the linear probe -----------------------------------------------------------------------------------
@torch.no_grad()
def cache_latents(model: PDAE, loader, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, y)`` of a whole loader with the EMA encoder, no augmentation: (N, z_dim), (N, …)."""
    zs, ys = [], []
    for x, y in tqdm(loader, desc="encoding", disable=not progress, leave=False):
        zs.append(model.encode(x.to(model.device)).cpu())
        ys.append(y)
    return torch.cat(zs), torch.cat(ys)


@dataclass
class LinearProbe:
    """A linear classifier on standardised latents: ``logits = linear((z − mean)/std)``."""

    linear: nn.Linear
    mean: torch.Tensor
    std: torch.Tensor
    best_epoch: int
    val_score: float

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear((z - self.mean) / self.std)


def probe_scores(logits: torch.Tensor, y: torch.Tensor, task: str) -> dict[str, float]:
    """Multi-class: top-1 accuracy. Multi-label: mean per-attribute accuracy and mean per-attribute AUROC."""
    if task == "multilabel":
        yi = y.long()
        acc = TMF.classification.multilabel_accuracy(logits, yi, num_labels=y.shape[1], average="macro")
        auroc = TMF.classification.multilabel_auroc(logits, yi, num_labels=y.shape[1], average="macro")
        return {"acc": float(acc), "auroc": float(auroc)}
    return {"acc": float((logits.argmax(dim=1) == y).float().mean())}


def fit_linear_probe(
    z_train: torch.Tensor,
    y_train: torch.Tensor,
    z_val: torch.Tensor,
    y_val: torch.Tensor,
    num_outputs: int,
    task: str,
    epochs: int = 30,
    seed: int = 0,
    lr: float = 1e-3,
    batch_size: int = 256,
) -> LinearProbe:
    """The linear-probe protocol of docs/design.md §13.4: z standardised with the train split's mean/std, one
    ``Linear(z_dim, K)`` trained with CE (BCE for multi-label) by Adam 1e-3 at batch 256 on cached z, the epoch
    chosen on the validation split (accuracy, or AUROC for multi-label). Examples labelled −1 are dropped."""
    keep = labelled_mask(y_train)
    z_train, y_train = z_train[keep], y_train[keep]
    mean, std = z_train.mean(dim=0), z_train.std(dim=0).clamp_min(1e-6)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    linear = nn.Linear(z_train.shape[1], num_outputs)
    opt = torch.optim.Adam(linear.parameters(), lr=lr)
    zn, zv = (z_train - mean) / std, (z_val - mean) / std
    key = "auroc" if task == "multilabel" else "acc"
    best = (-math.inf, 0, None)
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(zn), generator=g)
        for i in range(0, len(zn), batch_size):
            idx = perm[i : i + batch_size]
            logits = linear(zn[idx])
            if task == "multilabel":
                loss = F.binary_cross_entropy_with_logits(logits, y_train[idx].float())
            else:
                loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            score = probe_scores(linear(zv), y_val, task)[key]
        if score > best[0]:
            best = (score, epoch, {k: v.clone() for k, v in linear.state_dict().items()})
    linear.load_state_dict(best[2])
    return LinearProbe(linear.requires_grad_(False), mean, std, best[1], best[0])


# manipulation ---------------------------------------------------------------------------------------------------
def edit_direction(probe: LinearProbe, target: int, task: str) -> torch.Tensor:
    """Unit direction in standardised z space that raises ``target``'s score.

    Multi-label: the attribute's weight row ``w_k`` (the reference). Multi-class (our extension to labelled data):
    ``w_k − mean_j w_j``, which raises logit k against the others (softmax ignores a shift common to all logits).
    """
    w = probe.linear.weight.detach()
    d = w[target] if task == "multilabel" else w[target] - w.mean(dim=0)
    return d / d.norm()


def manipulate_latent(z: torch.Tensor, probe: LinearProbe, direction: torch.Tensor, scale: float) -> torch.Tensor:
    """``z' = ((z−μ)/σ + s·√d_z·d)·σ + μ`` (docs/design.md §13.3, D34: √d_z for the reference's √512)."""
    mean, std = probe.mean.to(z), probe.std.to(z)
    zn = (z - mean) / std + scale * math.sqrt(z.shape[1]) * direction.to(z)
    return zn * std + mean


@torch.no_grad()
def manipulate(
    model: PDAE, x0: torch.Tensor, probe: LinearProbe, direction: torch.Tensor, scales: list[float],
    settings: ReconstructionSettings,
) -> torch.Tensor:
    """(B, S, c, H, W): decodings with the edited ``z`` from the ``x_T`` inverted with the *unedited* z."""
    z = model.encode(x0)
    x_T = model.invert(model.eps_fn(z, settings.shift), x0, settings.inversion_steps, settings.clip_inversion)
    frames = []
    for s in scales:
        z_edit = manipulate_latent(z, probe, direction, s)
        frames.append(model.decode(model.eps_fn(z_edit, settings.shift), x_T, settings.decode_steps, settings.clip))
    return torch.stack(frames, dim=1)
