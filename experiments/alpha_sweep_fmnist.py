"""Fashion-MNIST: does joint conditional sampling raise the class hit rate over unconditional sampling? (Fig. 4)

    JOINTDIFF_DATA_ROOT=../shared/data python experiments/alpha_sweep_fmnist.py \\
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
import torch.nn.functional as F
from torch import nn

from jointdiff.data import FashionMNISTDataModule
from jointdiff.sampling.alpha_sweep import run_alpha_sweep, write_sweep
from jointdiff.sampling.loading import load_diffusion_model


class LeNet5(nn.Module):
    """conv 6@5×5 → ReLU → pool → conv 16@5×5 → ReLU → pool → FC 256→120 → ReLU → FC 120→84 → (ReLU → FC 84→10)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(self.conv(x).flatten(1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.features(x)))


def as_saved(x: torch.Tensor) -> torch.Tensor:
    """The image a PNG of the sample would hold: uint8-quantised, back in [-1, 1]."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def train_judge(data, epochs: int, seed: int, make=LeNet5) -> tuple[nn.Module, float]:
    """Train ``make()`` (seeded) on the DataModule's training split with Adam 1e-3, batch 128; its test accuracy."""
    torch.manual_seed(seed)
    judge = make()
    opt = torch.optim.Adam(judge.parameters(), lr=1e-3)
    train = data.train_set
    for epoch in range(epochs):
        perm = torch.randperm(len(train))
        for i in range(0, len(train), 128):
            x, y = train.__getitems__(perm[i:i + 128].tolist())  # an ImageTensorDataset: one batched index
            loss = F.cross_entropy(judge(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"judge epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}", flush=True)
    judge.eval()
    test = data.test_set
    x, y = test.__getitems__(list(range(len(test))))
    with torch.no_grad():
        acc = (torch.cat([judge(x[i:i + 1000]) for i in range(0, len(x), 1000)]).argmax(1) == y).float().mean()
    return judge, float(acc)


@torch.no_grad()
def noisy_head_accuracy(model, images: torch.Tensor, labels: torch.Tensor, steps: list[int], seed: int) -> dict:
    """Accuracy of the joint model's own head on ``q(x_i | x0)`` at each step i (the sampler's inputs)."""
    net = model.eval_network.eval()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in steps:
        t = torch.full((len(images),), i, dtype=torch.long)
        x = model.diffusion.q_sample(images, t, torch.randn(images.shape, generator=g))
        logits = torch.cat([net.classify(x[k:k + 500], t[k:k + 500]) for k in range(0, len(x), 500)])
        out[str(i)] = float((logits.argmax(1) == labels).float().mean())
    return out


def refit_head(model, data: FashionMNISTDataModule, steps: int, lr: float, seed: int) -> list[float]:
    """Control, not the paper's model: re-train only the head of the sampling network on *frozen* encoder features
    of noised training images (``q(x_i | x0)``, ``i ~ U{0…T−1}``: the noisy-classifier regime, D4 ``replace``),
    so that the conditional sampler can be tried with a head that carries class information. Returns the loss
    curve (means over 50-step windows)."""
    torch.manual_seed(seed)
    net = model.eval_network
    net.requires_grad_(False).eval()
    head = net.head.requires_grad_(True).train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    train, losses, window = data.train_set, [], []
    for step in range(steps):
        idx = torch.randint(0, len(train), (64,)).tolist()
        x0, y = train.__getitems__(idx)
        t = torch.randint(0, model.diffusion.num_steps, (64,))
        with torch.no_grad():
            middle, skips = net.unet.encode(model.diffusion.q_sample(x0, t, torch.randn_like(x0)), t)
        loss = F.cross_entropy(net.classify_features(middle, skips, t), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append(loss.item())
        if len(window) == 50:
            losses.append(sum(window) / 50)
            print(f"head refit step {step + 1}/{steps}: mean loss {losses[-1]:.3f}", flush=True)
            window = []
    head.eval().requires_grad_(False)
    return losses


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
                        help="clamp x̂0 at every step (as the main job's grids); the reference sampler does not")
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
