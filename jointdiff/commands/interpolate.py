"""``jointdiff interpolate``: PDAE interpolation between pairs of real images (docs/design.md §13.3).

    jointdiff interpolate --checkpoint runs/.../last.ckpt --data FashionMNISTDataModule --pairs 4 --num_lambdas 11

Each image is encoded to ``(z, x_T)`` (x_T by DDIM inversion with its own z); for λ evenly spaced in [0, 1] the
pair is decoded from ``(slerp(x_T^a, x_T^b; λ), lerp(z^a, z^b; λ))``. With ``--compare_base`` (default) each
PDAE row is followed by the pre-trained DPM's own interpolation (slerp of its DDIM codes, no latent). Writes
``interpolation.png`` and ``interpolation.json`` (indices, settings, and the MSE of the λ = 0 and λ = 1 frames to
their endpoint images: the reconstruction error at the ends of the path).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from jointdiff.commands.reconstruct import load_pdae_and_data, pdae_parser, pick_images, settings_from, split_dataset
from jointdiff.files import atomic_write_json
from jointdiff.images import save_grid
from jointdiff.models.pdae_inference import interpolate, interpolate_base, reconstruction_errors


def main(argv: list[str]) -> dict:
    parser = pdae_parser("interpolate", __doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4, help="image pairs (rows of the figure)")
    parser.add_argument("--num_lambdas", type=int, default=11, help="frames per pair, λ = 0 … 1")
    parser.add_argument("--compare_base", type=bool, default=True, help="add the bare DPM's interpolation rows")
    cfg, model, dm, out = load_pdae_and_data(parser, argv)
    if cfg.num_lambdas < 2:
        raise ValueError(f"--num_lambdas must be >= 2, got {cfg.num_lambdas}")
    settings = settings_from(cfg)
    lambdas = torch.linspace(0, 1, cfg.num_lambdas).tolist()
    idx, x, _ = pick_images(split_dataset(dm, cfg.split), 2 * cfg.pairs, cfg.seed)
    perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(cfg.seed))  # random pairing
    a, b = perm[: cfg.pairs], perm[cfg.pairs :]
    rows, end_errors = [], []
    for start in tqdm(range(0, cfg.pairs, cfg.batch_size), desc="interpolating", disable=not cfg.progress):
        xa = x[a[start : start + cfg.batch_size]].to(cfg.device)
        xb = x[b[start : start + cfg.batch_size]].to(cfg.device)
        frames = interpolate(model, xa, xb, lambdas, settings).cpu()  # (P, L, c, H, W)
        end_errors.append(torch.cat([reconstruction_errors(xa.cpu(), frames[:, 0])["mse"],
                                     reconstruction_errors(xb.cpu(), frames[:, -1])["mse"]]))
        base = interpolate_base(model, xa, xb, lambdas, settings).cpu() if cfg.compare_base else None
        for p in range(len(frames)):
            rows.append(frames[p])
            if base is not None:
                rows.append(base[p])
    save_grid(torch.cat(rows), out / "interpolation.png", nrow=len(lambdas))
    result = {
        "checkpoint": str(cfg.checkpoint), "split": cfg.split, "seed": cfg.seed,
        "pairs": [[int(idx[i]), int(idx[j])] for i, j in zip(a, b, strict=True)], "lambdas": lambdas,
        "settings": vars(settings), "rows": "PDAE, DDIM (bare DPM) alternating" if cfg.compare_base else "PDAE",
        "endpoint_mse": float(torch.cat(end_errors).mean()),
    }
    atomic_write_json(result, out / "interpolation.json")
    print(f"interpolation of {cfg.pairs} pairs written to {out / 'interpolation.png'} "
          f"(endpoint MSE {result['endpoint_mse']:.5f})", flush=True)
    return result
