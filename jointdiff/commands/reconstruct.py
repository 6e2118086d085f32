"""``jointdiff reconstruct``: PDAE autoencoding of real images, against the pre-trained DPM's own DDIM inversion.

    jointdiff reconstruct --checkpoint runs/evidence/fmnist_pdae/version_0/checkpoints/last.ckpt \\
        --data FashionMNISTDataModule --num_images 200 --inversion_steps 50 --decode_steps 50

For each image: z = E(x0), x_T by DDIM inversion with the z-shifted ε̂, DDIM decoding from x_T with z ("pdae");
decoding from random x_T with z ("pdae_random_xT"); and the bare DPM's inversion + decoding ("ddim", PDAE's
Table 1 "DDIM" row). Writes ``reconstruction.json`` (per-method mean/std of per-image MSE and SSIM on [0, 1],
the image indices and every setting) and ``reconstruction.png`` (rows: original, PDAE, DDIM, PDAE with random
x_T, |PDAE − x|, |DDIM − x|).

This module also holds what the three PDAE subcommands share: their argument parser and model/data loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from torch.utils.data import default_collate
from tqdm.auto import tqdm

import jointdiff.data  # noqa: F401  (registers DataModules for short class names)
from jointdiff.data.base import ImageDataModule
from jointdiff.files import atomic_write_json
from jointdiff.images import save_grid
from jointdiff.models.checkpoints import load_model
from jointdiff.models.pdae import PDAE
from jointdiff.models.pdae_inference import ReconstructionSettings, reconstruct, reconstruction_errors


# shared by reconstruct / interpolate / manipulate ----------------------------------------------------------------
def pdae_parser(command: str, description: str) -> ArgumentParser:
    parser = ArgumentParser(prog=f"jointdiff {command}", description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these arguments")
    parser.add_argument("--checkpoint", type=str, required=True, help="a PDAE checkpoint (jointdiff fit --model PDAE)")
    parser.add_subclass_arguments(
        ImageDataModule, "data", required=True,
        help="the DataModule the PDAE was trained on, e.g. FashionMNISTDataModule (options: --data.root …)",
    )
    parser.add_argument("--split", type=Literal["train", "val", "test"], default="test", help="images to use")
    parser.add_argument("--seed", type=int, default=0, help="picks the images and any random x_T")
    parser.add_argument("--batch_size", type=int, default=100, help="images per network call")
    parser.add_argument("--inversion_steps", type=int, default=100, help="DDIM steps of the inversion to x_T")
    parser.add_argument("--decode_steps", type=int, default=100, help="DDIM steps of the decoding")
    parser.add_argument("--clip", type=bool, default=True, help="clamp x̂0 to [-1, 1] while decoding")
    parser.add_argument("--clip_inversion", type=bool, default=True, help="clamp x̂0 while inverting (reference)")
    parser.add_argument(
        "--shift", type=Literal["sqrt_one_minus_alpha_bar", "c_t"], default="sqrt_one_minus_alpha_bar",
        help="coefficient of G in DDIM: √(1−ᾱ_t) (the reference) or the training coefficient c_t",
    )
    parser.add_argument("--out", type=Optional[str], default=None,  # noqa: UP045 (jsonargparse type)
                        help=f"output folder (default: <run dir of the checkpoint>/{command})")
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--progress", type=bool, default=True, help="show progress bars")
    return parser


def settings_from(cfg) -> ReconstructionSettings:
    for key in ("inversion_steps", "decode_steps"):
        if cfg[key] < 1:
            raise ValueError(f"--{key} must be >= 1, got {cfg[key]}")
    return ReconstructionSettings(cfg.inversion_steps, cfg.decode_steps, cfg.clip, cfg.clip_inversion, cfg.shift)


def load_pdae_and_data(parser: ArgumentParser, argv: list[str]):
    """Parse ``argv``; return ``(cfg, model in eval mode on its device, datamodule after setup, out folder)``."""
    cfg = parser.parse_args(argv)
    init = parser.instantiate_classes(cfg)
    model = load_model(cfg.checkpoint, expected=PDAE, map_location=cfg.device).to(cfg.device)
    dm: ImageDataModule = init.data
    hp = model.hparams
    for key in ("image_size", "channels"):
        if getattr(dm, key) != hp[key]:
            raise ValueError(
                f"{cfg.checkpoint} was trained on {key}={hp[key]}, but --data gives {key}={getattr(dm, key)}: "
                "pass the DataModule (and its options) the PDAE was trained with"
            )
    dm.setup("test" if cfg.split == "test" else "fit")
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).resolve().parent.parent / parser.prog.split()[-1]
    out.mkdir(parents=True, exist_ok=True)
    return cfg, model, dm, out


def split_dataset(dm: ImageDataModule, split: str):
    ds = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}[split]
    if ds is None or len(ds) == 0:
        raise ValueError(f"{type(dm).__name__} has no {split} split (val_fraction=0?); choose another --split")
    return ds


def pick_images(ds, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num`` images of ``ds`` chosen at random with ``seed`` (sorted indices): (indices, x, y)."""
    if not 1 <= num <= len(ds):
        raise ValueError(f"asked for {num} images; the split has {len(ds)}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:num].sort().values
    x, y = default_collate([ds[int(i)] for i in idx])
    return idx, x, y


def summary(values: torch.Tensor) -> dict[str, float]:
    return {"mean": float(values.mean()), "std": float(values.std()) if len(values) > 1 else 0.0}


# the command ----------------------------------------------------------------------------------------------------
def main(argv: list[str]) -> dict:
    parser = pdae_parser("reconstruct", __doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=200, help="images to reconstruct")
    parser.add_argument("--figure_images", type=int, default=8, help="columns of the PNG figure")
    cfg, model, dm, out = load_pdae_and_data(parser, argv)
    settings = settings_from(cfg)
    idx, x, _ = pick_images(split_dataset(dm, cfg.split), cfg.num_images, cfg.seed)
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    errors: dict[str, list[torch.Tensor]] = {k: [] for k in ("pdae", "pdae_random_xT", "ddim")}
    shown: dict[str, list[torch.Tensor]] = {k: [] for k in ("x", "pdae", "pdae_random_xT", "ddim")}
    batches = range(0, len(x), cfg.batch_size)
    for start in tqdm(batches, desc="reconstructing", disable=not cfg.progress):
        xb = x[start : start + cfg.batch_size].to(cfg.device)
        rec = reconstruct(model, xb, settings, generator=gen)
        for key in errors:
            err = reconstruction_errors(xb, rec[key])
            errors[key].append(torch.stack([err["mse"], err["ssim"]], dim=1).cpu())
        if start == 0:
            n = min(cfg.figure_images, len(xb))
            shown["x"].append(xb[:n].cpu())
            for key in errors:
                shown[key].append(rec[key][:n].cpu())
    result = {
        "checkpoint": str(cfg.checkpoint), "split": cfg.split, "num_images": len(idx), "indices": idx.tolist(),
        "seed": cfg.seed, "settings": vars(settings), "metric_range": "[0, 1]",
    }
    for key, chunks in errors.items():
        values = torch.cat(chunks)
        result[key] = {"mse": float(values[:, 0].mean()), "mse_std": float(values[:, 0].std()),
                       "ssim": float(values[:, 1].mean()), "ssim_std": float(values[:, 1].std())}
    atomic_write_json(result, out / "reconstruction.json")
    rows = [shown[k][0] for k in ("x", "pdae", "ddim", "pdae_random_xT")]
    rows += [(shown[k][0] - shown["x"][0]).abs() - 1 for k in ("pdae", "ddim")]  # |error| ∈ [0, 2] shown as [-1, 1]
    save_grid(torch.cat(rows), out / "reconstruction.png", nrow=len(rows[0]))
    print(
        f"reconstruction of {len(idx)} {cfg.split} images "
        f"({settings.inversion_steps} inversion / {settings.decode_steps} decoding DDIM steps):\n"
        + "\n".join(f"  {k:<16} MSE {result[k]['mse']:.5f}  SSIM {result[k]['ssim']:.4f}" for k in errors)
        + f"\n  written: {out / 'reconstruction.json'}, {out / 'reconstruction.png'}",
        flush=True,
    )
    return result
