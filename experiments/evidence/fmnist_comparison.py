"""Fashion-MNIST at CPU scale: stand-alone classifier vs frozen-DDPM probe vs joint model at equal steps,
and PDAE's reconstruction against the plain DPM's DDIM inversion, plus the linear probe of PDAE's z.

Runs, one at a time (each skipped when its result file already exists, so the script resumes):

1. ``jointdiff fit -c experiments/evidence/configs/fmnist_ddpm.yaml``        the DDPM (pre-trained model of 3 and 4)
2. ``jointdiff fit -c experiments/evidence/configs/fmnist_classifier.yaml``  stand-alone classifier (600 steps)
3. ``jointdiff fit -c experiments/evidence/configs/fmnist_probe.yaml``       head on the frozen DDPM encoder (600 steps)
4. ``jointdiff fit -c configs/demo.yaml``             joint model (600 steps)
5. ``jointdiff fit -c experiments/evidence/configs/fmnist_pdae.yaml``        PDAE on the DDPM (600 steps)
6. ``jointdiff reconstruct``  PDAE vs DDIM inversion-reconstruction on ``--rec_images`` test images
7. ``jointdiff manipulate``   linear probe of z (3 seeds) and a class edit

The classifier, probe and joint fits log under ``runs/evidence/cmp_<config>/`` (their own logger name, so
other runs of the same config do not mix in); the DDPM and PDAE keep their configs' names, whose checkpoints have
fixed paths. Then prints a markdown table of the numbers.

The joint model here is the demo's (``configs/demo.yaml``: C=16, 1000 steps), so the three fits are not at equal
architecture and steps; the script reproduces the earliest CPU comparison of ``docs/results.md``. The
equal-footing comparison (same encoder and head, same labelled batches and steps, three seeds) is
``experiments/evidence/cpu_evidence.py --parts semi``.

    JOINTDIFF_DATA_ROOT=../shared/data OMP_NUM_THREADS=1 nice -n 10 \
        python experiments/evidence/fmnist_comparison.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

JOINTDIFF = [sys.executable, "-m", "jointdiff.cli"]
RUNS = Path("runs/evidence")
CONFIGS = "experiments/evidence/configs"
DDPM_CKPT = RUNS / "fmnist_ddpm/checkpoints/last.ckpt"  # fixed dirpath in fmnist_ddpm.yaml
PDAE_CKPT = RUNS / "fmnist_pdae/checkpoints/last.ckpt"  # fixed dirpath in fmnist_pdae.yaml


def metrics_of(name: str) -> dict | None:
    files = sorted((RUNS / name).glob("version_*/metrics.json"), key=lambda p: int(p.parent.name.split("_")[1]))
    for path in reversed(files):
        data = json.loads(path.read_text())
        if "test" in data:
            return data
    return None


def fit(config: str, extra: list[str] = (), own_name: bool = True) -> dict:
    """Fit the YAML file ``config`` unless done. ``own_name=False`` keeps the config's logger name (the DDPM and PDAE,
    whose checkpoints have fixed paths)."""
    stem = Path(config).stem
    name = f"cmp_{stem}" if own_name else stem
    done = metrics_of(name)
    if done is None:
        cmd = [*JOINTDIFF, "fit", "-c", config, *extra]
        if own_name:
            cmd += ["--trainer.logger.init_args.save_dir", str(RUNS), "--trainer.logger.init_args.name", name]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        done = metrics_of(name)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rec_images", type=int, default=200)
    ap.add_argument("--ddim_steps", type=int, default=50)
    ap.add_argument("--out", default="runs/evidence/cmp_pdae_eval")
    args = ap.parse_args()
    out = Path(args.out)

    ddpm = fit(f"{CONFIGS}/fmnist_ddpm.yaml", own_name=False)
    clf = fit(f"{CONFIGS}/fmnist_classifier.yaml")
    probe = fit(f"{CONFIGS}/fmnist_probe.yaml", ["--model.init_args.checkpoint", str(DDPM_CKPT)])
    joint = fit("configs/demo.yaml")
    pdae = fit(f"{CONFIGS}/fmnist_pdae.yaml", ["--model.init_args.pretrained", str(DDPM_CKPT)], own_name=False)

    steps = ["--inversion_steps", str(args.ddim_steps), "--decode_steps", str(args.ddim_steps)]
    common = ["--checkpoint", str(PDAE_CKPT), "--data", "FashionMNISTDataModule", *steps]
    rec_file = out / "reconstruct" / "reconstruction.json"
    if not rec_file.exists():
        subprocess.run([*JOINTDIFF, "reconstruct", *common, "--num_images", str(args.rec_images),
                        "--out", str(rec_file.parent)], check=True)
    man_file = out / "manipulate" / "probe.json"
    if not man_file.exists():
        subprocess.run([*JOINTDIFF, "manipulate", *common, "--target", "1", "--num_images", "8",
                        "--out", str(man_file.parent)], check=True)
    rec = json.loads(rec_file.read_text())
    lin = json.loads(man_file.read_text())

    print("\n| model (600 steps, batch 64) | test acc (EMA) | test acc (raw) |")
    print("|---|---|---|")
    for label, m in (("stand-alone classifier", clf), ("frozen-DDPM probe", probe), ("joint model (λ=0.001)", joint)):
        t = m["test"]
        print(f"| {label} | {t['test/acc']:.4f} | {t['test/acc_raw']:.4f} |")
    print(f"\nDDPM test diffusion loss {ddpm['test']['test/diffusion_loss']:.4f}; "
          f"PDAE test loss {pdae['test']['test/loss']:.4f} vs frozen DDPM alone {pdae['test']['test/loss_base']:.4f}")
    print(f"\nreconstruction of {rec['num_images']} test images, {args.ddim_steps}+{args.ddim_steps} DDIM steps:")
    print("| method | MSE [0,1] | SSIM |")
    print("|---|---|---|")
    for key in ("pdae", "ddim", "pdae_random_xT"):
        print(f"| {key} | {rec[key]['mse']:.5f} ± {rec[key]['mse_std']:.5f} | {rec[key]['ssim']:.4f} |")
    acc = lin["test_acc"]
    print(f"\nlinear probe of PDAE z (d={lin['z_dim']}): test acc {acc['mean']:.4f} ± {acc['std']:.4f} "
          f"over {len(lin['runs'])} seeds")


if __name__ == "__main__":
    main()
