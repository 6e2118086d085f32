"""Judging conditional samples independently of the model that drew them: a small classifier trained here on
the real data (LeNet-5 for 28-px digits and garments, the paper's MNIST judge, docs/design.md §10), the
model's own head on noised inputs (how good the steering signal is), and a head re-fitted on frozen noisy
features (a control, not the paper's model). Used by ``experiments/alpha_sweep_*.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jointdiff.data.base import ImageDataModule
from jointdiff.images import from_uint8, to_uint8


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
    return from_uint8(to_uint8(x, rounding="round"))


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


def refit_head(model, data: ImageDataModule, steps: int, lr: float, seed: int) -> list[float]:
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
