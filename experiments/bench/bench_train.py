"""Training throughput and peak memory of one joint training step, against the authors' implementation.

One step = ``JointDiffusion.training_step`` (diffusion forward, classifier encoder pass, both losses) + backward +
AdamW + EMA update — what the model does per batch. Implementations, each at the identical architecture and math:

- ``reference``: the authors' computation — explicit legacy attention (``QKVAttentionLegacy``), AdamW without
  foreach/fused kernels, guided-diffusion's per-parameter EMA loop, fp32, NCHW.
- ``ours``: this package's defaults — SDPA attention, AdamW (fused on CUDA, foreach otherwise), ``_foreach`` EMA.
- ``ours-cl``: ``ours`` with channels-last tensors.
- ``ours-bf16``: ``ours`` under bf16 autocast, as ``--trainer.precision bf16-mixed`` runs it.
- ``ours-compile``: ``ours`` with ``compile=True`` (``torch.compile`` of the UNet encoder and decoder).
- ``ours-shared``: ``ours`` with ``share_encoder_pass=True`` (the noisy classifier term reuses the diffusion pass's
  encoder outputs; only for configs whose classifier sees the diffusion's own ``x_i``, such as ``demo``).

Configs: the paper's ``fmnist``, ``cifar``, ``celeba``, and ``demo``: the model of the demo
(``configs/demo.yaml``, read from the file), where ``ours`` is its plain path whatever the file
says about ``share_encoder_pass``.

``--with-lightning`` adds, for every implementation except ``reference``, a row ``<impl>+L`` that times the real
``Trainer.fit`` loop on real Fashion-MNIST batches (StatefulDataLoader, logging every 10 steps, progress bar), so
the framework's overhead per step shows beside the bare step. ``--finite-check`` adds ``<impl>+L+F``: the same loop
with the divergence check every ``jointdiff fit`` runs (:class:`jointdiff.callbacks.finite.StopOnNonFinite` at its
default cadence: every step on CPU, every 100 steps on an accelerator), and prints its cost against ``<impl>+L``.

Each (config, implementation) pair runs in its own subprocess so peak memory is its own (CUDA: max allocated;
CPU: max RSS of the process). Ratios are against ``reference`` measured in the same invocation, and against
``ours`` (the plain path).

    python experiments/bench/bench_train.py                                   # FMNIST paper config, batch 16, CPU
    python experiments/bench/bench_train.py --configs fmnist,cifar,celeba --batch 128 --device cuda
    python experiments/bench/bench_train.py --configs demo --impls reference,ours,ours-shared --batch 64 \
        --with-lightning
    python experiments/bench/bench_train.py --configs demo --impls ours --batch 64 --with-lightning --finite-check \
        --steps 20
"""

from __future__ import annotations

import argparse
import json
import resource
import runpy
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CONFIGS = {
    # name: (image_size, channels, model_channels, classes, T) — the paper's (docs/design.md §4.4, D1)
    "fmnist": (28, 1, 64, 10, 500),
    "cifar": (32, 3, 128, 10, 1000),
    "celeba": (64, 3, 128, 40, 1000),
    "demo": (28, 1, None, 10, None),  # the rest from the demo's config file
}
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
IMPLS = ("reference", "ours", "ours-cl", "ours-bf16", "ours-compile", "ours-shared")


def model_args(config: str, impl: str) -> dict:
    """JointDiffusion keyword arguments of (config, implementation)."""
    size, ch, width, classes, steps = CONFIGS[config]
    args = dict(image_size=size, channels=ch, num_classes=classes,
                task="multilabel" if config == "celeba" else "multiclass")
    if config == "demo":
        import yaml

        args.update(yaml.safe_load(DEMO_CONFIG.read_text())["model"]["init_args"])
    else:
        args.update(model_channels=width, diffusion_steps=steps)
    args.update(compile=impl == "ours-compile", channels_last=impl == "ours-cl",
                share_encoder_pass=impl == "ours-shared", init_from=None)
    return args


def build(config: str, impl: str, device: str):
    import torch

    from jointdiff.models import JointDiffusion
    reference = runpy.run_path(str(REPO / "tests" / "reference.py"))  # the authors' code, kept with the tests
    reference_ema_update, use_legacy_attention = reference["reference_ema_update"], reference["use_legacy_attention"]

    size, ch, _, classes, _ = CONFIGS[config]
    task = "multilabel" if config == "celeba" else "multiclass"
    model = JointDiffusion(**model_args(config, impl)).to(device)
    model.log = lambda *a, **k: None  # no trainer attached: logging is not part of the measured step
    model.configure_model()
    if impl == "reference":
        use_legacy_attention(model.network)
        use_legacy_attention(model.ema.module)
        opt = torch.optim.AdamW(model.network.parameters(), lr=1e-4, foreach=False)
        ema_params = list(model.ema.module.parameters())

        def ema_update(step: int) -> None:
            reference_ema_update(ema_params, model.network.parameters(), model.hparams.ema_decay)
    else:
        opt = model.configure_optimizers()  # its step updates the EMA (EMA.follow)

        def ema_update(step: int) -> None:
            pass

    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(1, ch, size, size, generator=gen) * 2 - 1).to(device)
    if task == "multilabel":
        y = torch.randint(0, 2, (1, classes), generator=gen).to(device)
    else:
        y = torch.randint(0, classes, (1,), generator=gen).to(device)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=impl == "ours-bf16")

    def step(batch, i: int) -> None:
        with autocast:
            loss = model.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(i)

    return model, step, x, y


def measure(config: str, impl: str, batch: int, steps: int, warmup: int, device: str) -> dict:
    import torch

    model, step, x, y = build(config, impl, device)
    xb, yb = x.expand(batch, *x.shape[1:]).contiguous(), y.expand(batch, *y.shape[1:]).contiguous()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for i in range(warmup):
        step((xb, yb), i)
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        step((xb, yb), warmup + i)
    sync()
    dt = (time.perf_counter() - t0) / steps
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB (Linux)
    params = sum(p.numel() for p in model.network.parameters())
    return {"config": config, "impl": impl, "batch": batch, "s_per_step": dt, "img_per_s": batch / dt,
            "peak_mib": peak, "params": params, "threads": torch.get_num_threads(), "device": device}


def measure_lightning(config: str, impl: str, batch: int, steps: int, warmup: int, device: str,
                      finite: bool = False) -> dict:
    """Seconds per step of ``Trainer.fit`` on real Fashion-MNIST, between the starts of batch ``warmup`` and of batch
    ``warmup + steps`` (so the last step's work is inside the interval and no set-up or teardown is)."""
    import tempfile

    import lightning as L
    import torch

    from jointdiff.data import FashionMNISTDataModule
    from jointdiff.models import JointDiffusion

    class StepClock(L.Callback):
        def __init__(self):
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            self.starts.append(time.perf_counter())

    if impl == "reference":
        raise SystemExit("--with-lightning times this package's model in the Trainer; the reference has no such row")
    from jointdiff.callbacks.finite import StopOnNonFinite

    clock = StepClock()
    model = JointDiffusion(**model_args(config, impl))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_steps=warmup + steps + 1, accelerator="cuda" if device.startswith("cuda") else "cpu", devices=1,
            precision="bf16-mixed" if impl == "ours-bf16" else "32-true", limit_val_batches=0,
            log_every_n_steps=10, logger=L.pytorch.loggers.CSVLogger(tmp), enable_checkpointing=False,
            enable_model_summary=False, callbacks=[clock, *([StopOnNonFinite()] if finite else [])],
            default_root_dir=tmp,
        )
        trainer.fit(model, datamodule=FashionMNISTDataModule(batch_size=batch))
    dt = (clock.starts[warmup + steps] - clock.starts[warmup]) / steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    params = sum(p.numel() for p in model.network.parameters())
    return {"config": config, "impl": impl + ("+L+F" if finite else "+L"), "batch": batch, "s_per_step": dt,
            "img_per_s": batch / dt, "peak_mib": peak, "params": params, "threads": torch.get_num_threads(),
            "device": device}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="fmnist")
    p.add_argument("--impls", default="reference,ours,ours-cl,ours-bf16")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--with-lightning", action="store_true",
                   help="also time each implementation (but reference) inside the real Trainer loop")
    p.add_argument("--finite-check", action="store_true",
                   help="with --with-lightning: also time the loop with the divergence check (rows <impl>+L+F)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--worker", nargs=2, metavar=("CONFIG", "IMPL"), help=argparse.SUPPRESS)
    p.add_argument("--lightning", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--finite", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        if args.lightning:
            row = measure_lightning(*args.worker, args.batch, args.steps, args.warmup, args.device, args.finite)
        else:
            row = measure(*args.worker, args.batch, args.steps, args.warmup, args.device)
        print(json.dumps(row))
        return

    rows = []
    jobs = []
    for config in args.configs.split(","):
        for impl in args.impls.split(","):
            if impl not in IMPLS or config not in CONFIGS:
                raise SystemExit(f"unknown config/impl {config}/{impl}; configs {list(CONFIGS)}, impls {IMPLS}")
            jobs.append((config, impl, False, False))
        if args.with_lightning:
            for impl in (i for i in args.impls.split(",") if i != "reference"):
                jobs.append((config, impl, True, False))
                if args.finite_check:
                    jobs.append((config, impl, True, True))
    for config, impl, lightning, finite in jobs:
        cmd = [sys.executable, __file__, "--worker", config, impl, "--batch", str(args.batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
        cmd += (["--lightning"] if lightning else []) + (["--finite"] if finite else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{config}/{impl} failed")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  measured {config}/{impl}: {rows[-1]['img_per_s']:.2f} img/s", file=sys.stderr, flush=True)

    print(f"\ndevice={args.device} batch={args.batch} steps={args.steps} (after {args.warmup} warm-up)"
          f" threads={rows[0]['threads']}")
    print(f"{'config':8} {'impl':15} {'params':>8} {'s/step':>8} {'img/s':>8} {'× ref':>6} {'× ours':>6} "
          f"{'peak MiB':>9}")
    for r in rows:
        ratios = []
        for base in ("reference", "ours"):
            ref = next((q for q in rows if q["config"] == r["config"] and q["impl"] == base), None)
            ratios.append(f"{r['img_per_s'] / ref['img_per_s']:.2f}" if ref else "-")
        print(f"{r['config']:8} {r['impl']:15} {r['params'] / 1e6:7.2f}M {r['s_per_step']:8.3f} "
              f"{r['img_per_s']:8.2f} {ratios[0]:>6} {ratios[1]:>6} {r['peak_mib']:9.0f}")
    for r in rows:
        if r["impl"].endswith("+L+F"):
            plain = next((q for q in rows if q["config"] == r["config"] and q["impl"] == r["impl"][:-2]), None)
            if plain:
                print(f"divergence check, {r['config']}/{r['impl'][:-4]}: {r['s_per_step'] / plain['s_per_step']:.3f}"
                      f"× the step time of the loop without it ({plain['s_per_step']:.4f} → {r['s_per_step']:.4f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
