"""Fashion-MNIST: does joint conditional sampling raise the class hit rate over unconditional sampling? (Fig. 4)

    JOINTDIFF_DATA_ROOT=../shared/data python experiments/evidence/alpha_sweep_fmnist.py \\
        --checkpoint runs/.../last.ckpt --output runs/alpha_sweep_fmnist --alphas 0 50 200 500 1000 \\
        --num_per_class 20 --flip_alphas 200

The judge is independent of the joint model: a LeNet-5 (docs/design.md §10's architecture) trained here on the
Fashion-MNIST training split for ``--judge_epochs`` epochs (its test accuracy is printed and recorded); its 84-d
penultimate features (before ReLU, as the reference's LeNet feature model) give FID and PRD precision/recall
against ``--num_real`` test images. These are *LeNet-feature* scores, not Inception FID (the Inception weights
are not available offline), so they are comparable only within this run.

Every α starts from the same noise (same seed), so α=0 is exactly unconditional sampling of the same chains.
``--flip_alphas`` adds rows at those α with direction −1 (D11: flipping the reference's sign is expected
to lower the hit rate). Writes the table/plot of :mod:`jointdiff.sampling.alpha_sweep` plus ``judge.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from judge import as_saved, noisy_head_accuracy, refit_head, train_judge

from jointdiff.data import FashionMNISTDataModule
from jointdiff.sampling.alpha_sweep import run_alpha_sweep, write_sweep
from jointdiff.sampling.loading import load_diffusion_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--output", default="runs/alpha_sweep_fmnist")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0, 50, 100, 150, 200, 250, 500, 1000])
    parser.add_argument("--num_per_class", type=int, default=20)
    parser.add_argument("--flip_alphas", type=float, nargs="*", default=[],
                        help="α values also run with direction −1 (D11)")
    parser.add_argument("--num_real", type=int, default=2000)
    parser.add_argument("--judge_epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--refit_head_steps", type=int, default=0,
                        help="control: first re-train only the head on frozen noisy features for this many steps")
    parser.add_argument("--refit_head_lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=None,
                        help="run the joint sampler as η-DDIM on this many respaced steps (default: all T, ancestral)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM η of the respaced sampler")
    parser.add_argument("--respaced_alpha", choices=["same", "stride"], default="same",
                        help="α per respaced step: as on the full grid (same) or times the steps it covers (stride)")
    parser.add_argument("--clip_denoised", action="store_true",
                        help="clamp x̂0 at every step (as the demo's grids); the reference sampler does not")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    data = FashionMNISTDataModule()
    data.setup("fit")
    data.setup("test")
    began = time.perf_counter()
    judge, judge_acc = train_judge(data, args.judge_epochs, args.seed)
    print(f"independent LeNet-5 judge: test accuracy {judge_acc:.4f} ({time.perf_counter() - began:.0f} s)")
    torch.save(judge.state_dict(), out / "lenet_judge.pt")
    judge_logits = lambda x: judge(as_saved(x))  # noqa: E731
    judge_features = lambda x: judge.features(as_saved(x))  # noqa: E731
    real, _ = data.test_set.__getitems__(list(range(min(args.num_real, len(data.test_set)))))
    with torch.no_grad():
        real_features = judge_features(real)

    model = load_diffusion_model(args.checkpoint)
    classes = list(range(model.hparams.num_classes))
    T = model.diffusion.num_steps
    probe_steps = sorted({0, T // 20, T // 10, T // 5, T // 2, T - 1})
    refit = None
    if args.refit_head_steps:
        refit = refit_head(model, data, args.refit_head_steps, args.refit_head_lr, args.seed)
    real_labels = data.test_set.targets[: len(real)]
    head_acc = noisy_head_accuracy(model, real, real_labels, probe_steps, args.seed)
    print("joint head accuracy on noised test images, by step: " + ", ".join(f"{k}: {v:.3f}" for k, v in
                                                                               head_acc.items()), flush=True)
    common = dict(judge=judge_logits, features=judge_features, real_features=real_features, seed=args.seed,
                  batch_size=args.batch_size, grids=out / "grids", progress=False, clip_denoised=args.clip_denoised,
                  steps=args.steps, eta=args.eta, respaced_alpha=args.respaced_alpha)
    rows = run_alpha_sweep(model, args.alphas, classes, args.num_per_class, **common)
    for r in rows:
        r["direction"] = 1
    if args.flip_alphas:
        flipped = run_alpha_sweep(model, args.flip_alphas, classes, args.num_per_class, direction=-1,
                                  **{**common, "grids": out / "grids_flipped"})
        for r in flipped:
            r["direction"] = -1
        rows += flipped
    meta = {"checkpoint": args.checkpoint, "judge": "LeNet-5 trained in this script", "judge_test_accuracy": judge_acc,
            "judge_epochs": args.judge_epochs, "features": "LeNet-5 fc2 (84-d, pre-ReLU) of uint8-quantised images",
            "num_real": len(real_features), "head_accuracy_by_step": head_acc, "num_per_class": args.num_per_class,
            "seed": args.seed, "clip_denoised": args.clip_denoised, "steps": args.steps or model.diffusion.num_steps,
            "eta": args.eta if args.steps else None, "respaced_alpha": args.respaced_alpha if args.steps else None,
            "seeding": "per sample: (seed, index)", "head_refit": None if refit is None else {
                "steps": args.refit_head_steps, "lr": args.refit_head_lr, "loss_per_50_steps": refit,
                "note": "control: head re-trained on frozen noisy encoder features; not the paper's model"},
            "diffusion_steps": model.diffusion.num_steps, "hparams": dict(model.hparams)}
    paths = write_sweep([r for r in rows if r["direction"] == 1], out, meta)
    (out / "alpha_sweep_all.json").write_text(json.dumps({"rows": rows, **meta}, indent=2, default=str))
    print("wrote " + ", ".join(str(p) for p in paths.values()) + f", {out / 'alpha_sweep_all.json'}")


if __name__ == "__main__":
    main()
