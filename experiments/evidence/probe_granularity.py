"""Probe a pre-trained DDPM's pooled encoder features at increasing diffusion steps (the paper's Fig. 2b study).

Spec §9 ("granularity probe"): fit logistic regressions on ``z(x_i, i)`` of a frozen DDPM for several step values
``i``; the paper shows on CelebA that coarse attributes stay predictable from noisier steps than fine ones. For
multi-label data one binary regression per attribute is fitted and its test accuracy reported; for multi-class
data one multinomial regression, reported as overall accuracy and per-class recall. Features are read exactly as
:class:`~jointdiff.models.probe.FrozenDDPMProbe` reads them (clean image at step 0; ``x_i ~ q(x_i | x0)`` with
noise seeded per image otherwise), standardised with the train features; regressions are scikit-learn's.

    JOINTDIFF_DATA_ROOT=/work/shared/data python experiments/evidence/probe_granularity.py \\
        --checkpoint runs/evidence/fmnist_ddpm/checkpoints/last.ckpt --dataset FashionMNISTDataModule \\
        --timesteps 0 50 100 200 300 400 499 --train_images 3000 --test_images 2000 --out runs/granularity_fmnist

Writes ``granularity.json`` and ``granularity.png`` (score per class/attribute against the step) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import jointdiff.data as data  # noqa: E402
from jointdiff.diffusion.gaussian import GaussianDiffusion  # noqa: E402
from jointdiff.models.pretrained import frozen_encoder, load_pretrained_dpm  # noqa: E402
from jointdiff.nn.heads import pooled_features  # noqa: E402


@torch.no_grad()
def features(unet, diffusion, x0: torch.Tensor, step: int, batch: int, seed: int) -> np.ndarray:
    out = []
    g = torch.Generator().manual_seed(seed)
    for i in range(0, len(x0), batch):
        x = x0[i : i + batch]
        t = torch.full((len(x),), step, dtype=torch.long)
        noise = torch.randn(x.shape, generator=g)
        x_in = x if step == 0 else diffusion.q_sample(x, t, noise)
        out.append(pooled_features(*unet.encode(x_in, t)))
    return torch.cat(out).numpy()


def take(ds, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    x, y = ds.__getitems__(idx.tolist())
    keep = (y >= 0) if y.ndim == 1 else (y >= 0).all(dim=1)
    return x[keep], y[keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a JointDiffusion (DDPM) checkpoint")
    ap.add_argument("--dataset", required=True, help="DataModule class name in jointdiff.data")
    ap.add_argument("--image_size", type=int, default=None, help="DataModule image_size, if it has the option")
    ap.add_argument("--timesteps", type=int, nargs="+", required=True)
    ap.add_argument("--train_images", type=int, default=3000)
    ap.add_argument("--test_images", type=int, default=2000)
    ap.add_argument("--weights", choices=["ema", "raw"], default="ema")
    ap.add_argument("--batch_size", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    dm = getattr(data, args.dataset)(**({"image_size": args.image_size} if args.image_size else {}))
    dm.setup("fit")
    dpm = load_pretrained_dpm(args.checkpoint, dm.image_size, dm.channels)
    unet = frozen_encoder(dpm, args.weights)
    diffusion = GaussianDiffusion(dpm.hparams.diffusion_steps, dpm.hparams.beta_schedule)
    bad = [s for s in args.timesteps if not 0 <= s < diffusion.num_steps]
    if bad:
        raise SystemExit(f"--timesteps {bad} outside 0..{diffusion.num_steps - 1}")
    x_tr, y_tr = take(dm.train_set, args.train_images, args.seed)
    x_te, y_te = take(dm.test_set, args.test_images, args.seed)
    multilabel = dm.task == "multilabel"
    names = getattr(dm, "attribute_names", None) or [str(k) for k in range(dm.num_classes)]
    rows = []
    for step in args.timesteps:
        f_tr = features(unet, diffusion, x_tr, step, args.batch_size, args.seed)
        f_te = features(unet, diffusion, x_te, step, args.batch_size, args.seed + 1)
        scaler = StandardScaler().fit(f_tr)
        f_tr, f_te = scaler.transform(f_tr), scaler.transform(f_te)
        if multilabel:
            per = []
            for k in range(dm.num_classes):
                yk_tr, yk_te = y_tr[:, k].numpy(), y_te[:, k].numpy()
                if len(np.unique(yk_tr)) < 2:
                    per.append(float("nan"))
                    continue
                clf = LogisticRegression(max_iter=2000).fit(f_tr, yk_tr)
                per.append(float((clf.predict(f_te) == yk_te).mean()))
            row = {"step": step, "mean_accuracy": float(np.nanmean(per)), "per_attribute_accuracy": per}
        else:
            clf = LogisticRegression(max_iter=2000).fit(f_tr, y_tr.numpy())
            pred = clf.predict(f_te)
            yt = y_te.numpy()
            recall = [float((pred[yt == k] == k).mean()) if (yt == k).any() else float("nan")
                      for k in range(dm.num_classes)]
            row = {"step": step, "accuracy": float((pred == yt).mean()), "per_class_recall": recall}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("per_")}), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": args.checkpoint, "dataset": args.dataset, "weights": args.weights,
              "train_images": len(x_tr), "test_images": len(x_te), "seed": args.seed, "rows": rows,
              "names": names}
    (out / "granularity.json").write_text(json.dumps(result, indent=2))
    key = "per_attribute_accuracy" if multilabel else "per_class_recall"
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, name in enumerate(names):
        ax.plot(steps, [r[key][k] for r in rows], marker="o", label=name, lw=1)
    ax.set_xlabel("diffusion step i of the probed features")
    ax.set_ylabel("test accuracy" if multilabel else "test recall (multinomial probe)")
    ax.set_title(f"{args.dataset}: linear probe of z(x_i, i)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "granularity.png", dpi=120)
    print(f"written: {out / 'granularity.json'}, {out / 'granularity.png'}")


if __name__ == "__main__":
    main()
