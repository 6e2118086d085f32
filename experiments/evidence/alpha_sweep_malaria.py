"""MALARIA counterfactuals (docs/design.md §6, D18) over α: how often does the counterfactual reach the other class?

    JOINTDIFF_DATA_ROOT=../shared/data python experiments/evidence/alpha_sweep_malaria.py \\
        --checkpoint runs/evidence/malaria_counterfactual/checkpoints/last.ckpt --output runs/cf_sweep_malaria \\
        --alphas 0 200 1000 --num_per_class 32

Test images (``--num_per_class`` of each class, the first of each class in the served test order) are noised to
``round(f·T)`` steps and denoised toward the other class (Parasitized ↔ Uninfected) with the joint sampler; the
same seed for every α, so α=0 is the plain noise-and-denoise reconstruction the counterfactual must beat. Judged by
an independent small CNN (LeNet-5 layout for 3×32×32, trained here on the training split; its test accuracy is
recorded) and by the model's own head. ``--refit_head_steps`` first re-trains only the head on frozen noisy
features (a control: does the sampler steer when the head carries class information?). Per α: a figure of the
first 4 images of each class (``cf_alpha_<α>.png``), and the table ``cf_sweep.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from judge import as_saved, noisy_head_accuracy, refit_head, train_judge
from torch import nn

from jointdiff.data import MalariaDataModule
from jointdiff.diffusion.conditional import counterfactual
from jointdiff.sampling.counterfactual import save_figure
from jointdiff.sampling.loading import load_diffusion_model

CLASSES = ("Uninfected", "Parasitized")


class SmallCNN(nn.Module):
    """LeNet-5's layout for 3×32×32 inputs: conv 6@5 → pool → conv 16@5 → pool → 400 → 120 → 84 → 2."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 2),
        )

    def forward(self, x):
        return self.net(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--output", default="runs/cf_sweep_malaria")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0, 200, 1000])
    parser.add_argument("--num_per_class", type=int, default=32)
    parser.add_argument("--noise_fraction", type=float, default=0.2)
    parser.add_argument("--judge_epochs", type=int, default=2)
    parser.add_argument("--refit_head_steps", type=int, default=0)
    parser.add_argument("--refit_head_lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    model = load_diffusion_model(args.checkpoint)
    hp = model.hparams
    data = MalariaDataModule(image_size=hp.image_size, preprocessing="standard")  # as its recorded results
    data.setup("fit")
    data.setup("test")
    began = time.perf_counter()
    judge, judge_acc = train_judge(data, args.judge_epochs, args.seed, make=SmallCNN)
    print(f"independent CNN judge: test accuracy {judge_acc:.4f} ({time.perf_counter() - began:.0f} s)", flush=True)

    test = data.test_set
    by_class = [torch.nonzero(test.targets == c)[:, 0][: args.num_per_class] for c in (0, 1)]
    # interleave so that the figure's first 8 columns hold 4 of each class
    idx = torch.stack(by_class, 1).flatten()
    x0, y = test.__getitems__(idx.tolist())
    T = model.diffusion.num_steps
    refit = None
    if args.refit_head_steps:
        refit = refit_head(model, data, args.refit_head_steps, args.refit_head_lr, args.seed)
    head_acc = noisy_head_accuracy(model, *test.__getitems__(list(range(0, len(test), 4))),
                                   sorted({0, T // 10, T // 5, T // 2, T - 1}), args.seed)
    print("head accuracy on noised test images, by step: " + ", ".join(f"{k}: {v:.3f}" for k, v in head_acc.items()),
          flush=True)
    net = model.eval_network.eval()
    targets = 1 - y
    t0 = torch.zeros(len(x0), dtype=torch.long)

    def probs(x):
        with torch.no_grad():
            return judge(as_saved(x)).softmax(1), net.classify(x, t0).softmax(1)

    judge_before, head_before = probs(x0)
    rows = []
    for a in args.alphas:
        g = torch.Generator().manual_seed(args.seed)
        began = time.perf_counter()
        noised, cf = counterfactual(net, model.diffusion, x0, targets, a, args.noise_fraction, generator=g)
        judge_after, head_after = probs(cf)
        hit = lambda p: float((p.argmax(1) == targets).float().mean())  # noqa: E731
        p_target = lambda p: float(p.gather(1, targets[:, None]).mean())  # noqa: E731
        row = {"alpha": a, "judge_reached_before": hit(judge_before), "judge_reached_after": hit(judge_after),
               "judge_p_target_before": p_target(judge_before), "judge_p_target_after": p_target(judge_after),
               "head_reached_before": hit(head_before), "head_reached_after": hit(head_after),
               "mean_abs_difference": float((cf - x0).abs().mean()), "num": len(x0),
               "seconds": time.perf_counter() - began}
        k = 8
        pb, pa = (p.gather(1, targets[:, None])[:, 0] for p in (head_before, head_after))
        titles = [f"test[{int(i)}] ({CLASSES[int(c)]})" for i, c in zip(idx[:k], y[:k], strict=True)]
        row["figure"] = str(save_figure(x0[:k], noised[:k], cf[:k], pb[:k], pa[:k],
                                        [CLASSES[int(c)] for c in targets[:k]], titles, out / f"cf_alpha_{a:g}.png"))
        rows.append(row)
        print("  ".join(f"{key}={v:.4g}" if isinstance(v, float) else f"{key}={v}" for key, v in row.items()),
              flush=True)
    cols = [c for c in rows[0] if c != "figure"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |"
              for r in rows]
    (out / "cf_sweep.md").write_text("\n".join(lines) + "\n")
    meta = {"checkpoint": args.checkpoint, "judge": "SmallCNN trained in this script", "judge_test_accuracy": judge_acc,
            "judge_epochs": args.judge_epochs, "noise_fraction": args.noise_fraction, "test_indices": idx.tolist(),
            "head_accuracy_by_step": head_acc, "seed": args.seed, "diffusion_steps": T,
            "head_refit": None if refit is None else {"steps": args.refit_head_steps, "lr": args.refit_head_lr,
                                                      "loss_per_50_steps": refit,
                                                      "note": "control: head re-trained on frozen noisy features"}}
    (out / "cf_sweep.json").write_text(json.dumps({"rows": rows, **meta}, indent=2, default=str))
    print(f"wrote {out / 'cf_sweep.md'} and {out / 'cf_sweep.json'}")


if __name__ == "__main__":
    main()
