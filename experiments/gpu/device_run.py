"""The prepared run for a lent GPU: paper-scale throughput, sampling cost, the data path and a time-capped paper
training run, in one call of at most ~9 minutes. Results go to ``<out>/gpu_run.json`` (rewritten after every part,
so a run cut short still leaves what it measured); the caller tees the log to ``<out>/gpu_run.log``.

    python experiments/gpu/device_run.py --out $OUT --budget-s 510    # on the device (see README.md here)
    python experiments/gpu/device_run.py --out /tmp/gpu --dry-run     # anywhere: tiny sizes, a few steps each

Parts, each under its own share of the budget (a part that runs out of time records what it finished and
``skipped`` for the rest):

a. ``throughput``: one joint training step (forward, both losses, backward, AdamW, EMA) of the three paper
   configurations (``configs/paper/data/{fashion_mnist,cifar10,celeba}.yaml`` with the joint method) at the paper's
   batch sizes, in fp32, bf16 autocast, bf16 + channels-last, and bf16 + ``torch.compile`` (compile time reported
   apart; these rows come last, as time allows). FLOPs of one
   step are counted with ``torch.utils.flop_counter.FlopCounterMode``; the fraction of peak divides the achieved
   rate by the GPU's peak (:data:`PEAK_TFLOPS`: bf16 dense as measured on the H200 here, fp32 from the datasheet).
b. ``sampling``: per-step cost of DDPM, DDIM, joint conditional sampling (fp32 and bf16 autocast, and with the
   encoder and decoder compiled) and classifier guidance at the paper's Fashion-MNIST size, at the batch that
   ``jointdiff sample --batch_size auto`` picks for the joint sampler.
c. ``data_path``: the Fashion-MNIST step (bf16) fed by the real DataModule's loader (pinned memory) against the
   same step on a batch already on the GPU.
d. ``training``: ``jointdiff fit`` of the paper's F-MNIST joint model (``FMNIST_JOINT``, the composition that
   ``jointdiff paper`` runs) with the fastest
   precision/memory-format/compile setting of (a), capped by ``--trainer.max_time`` to the rest of the budget,
   validating every ``--val-every`` steps on the held-out split and testing at the end; accuracy against steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
FMNIST_JOINT = ("configs/base/default.yaml", "configs/paper/data/fashion_mnist.yaml", "configs/paper/models/joint.yaml")
sys.path.insert(0, str(REPO))

# Peak dense throughput of the lent H200 in TFLOP/s: bf16 as measured there (an 8192³ matmul, device KINDS.md),
# fp32 (no tensor cores) from NVIDIA's datasheet.
PEAK_TFLOPS = {"bf16": 790.0, "fp32": 67.0}
PAPER = {  # name: (dataset fragment, paper batch)
    "fmnist": ("configs/paper/data/fashion_mnist.yaml", 128),
    "cifar10": ("configs/paper/data/cifar10.yaml", 256),
    "celeba": ("configs/paper/data/celeba.yaml", 128),
}
SHAPES = {  # name: (image size, channels, classes, task)
    "fmnist": (28, 1, 10, "multiclass"), "cifar10": (32, 3, 10, "multiclass"), "celeba": (64, 3, 40, "multilabel"),
}
# --dry-run: tiny networks (no full-resolution attention), same code paths; torch.compile is left out of the dry run
# (about a minute per model on a CPU; tests/test_speed_equivalence.py covers the model's compile option)
DRY = dict(model_channels=32, num_res_blocks=1, attention_downsample=[], diffusion_steps=20)
MODES = ("fp32", "bf16", "bf16+channels_last", "bf16+compile")  # the compiled rows last: the dry run leaves them out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Budget:
    """Wall-clock shares of the whole run."""

    def __init__(self, seconds: float):
        self.start, self.total = time.perf_counter(), seconds

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.start)


def model_args(name: str, dry: bool) -> dict:
    """The joint model of a paper configuration: the dataset fragment's UNet and T, the joint method's objective."""
    fragment = yaml.safe_load((REPO / PAPER[name][0]).read_text())["model"]["init_args"]
    method = yaml.safe_load((REPO / "configs/paper/models/joint.yaml").read_text())["model"]["init_args"]
    size, channels, classes, task = SHAPES[name]
    args = {**fragment, **method, "image_size": size, "channels": channels, "num_classes": classes, "task": task}
    return {**args, **DRY} if dry else args


def synced(device):
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def build_step(name: str, mode: str, device, dry: bool):
    """(model, step(batch)) for one paper configuration under a precision mode."""
    import torch

    from jointdiff.models import JointDiffusion

    model = JointDiffusion(**model_args(name, dry), compile=mode.endswith("compile"),
                           channels_last=mode.endswith("channels_last")).to(device)
    model.log = lambda *a, **k: None  # no trainer: logging is not part of the measured step
    model._may_have_unlabelled = False  # fully labelled data, as setup() finds it: no per-step label check (a sync)
    model.configure_model()
    opt = model.configure_optimizers()  # its step also updates the EMA (EMA.follow)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode.startswith("bf16"))

    def step(batch) -> None:
        with autocast:
            loss = model.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step


def synthetic_batch(name: str, batch: int, device):
    import torch

    size, channels, classes, task = SHAPES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, channels, size, size, generator=g) * 2 - 1
    if task == "multilabel":
        y = torch.randint(0, 2, (batch, classes), generator=g)
    else:
        y = torch.randint(0, classes, (batch,), generator=g)
    return x.to(device), y.to(device)


def step_flops(name: str, batch: int, device, dry: bool) -> tuple[int, dict[str, int]]:
    """FLOPs (multiply-add = 2) of one eager training step, counted by torch's FlopCounterMode: the total and the
    count of each operator (convolutions, attention, matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    _, step = build_step(name, "fp32", device, dry)
    xb = synthetic_batch(name, batch, device)
    with FlopCounterMode(display=False) as counter:
        step(xb)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), by_op


def measure_training_step(name: str, mode: str, batch: int, steps: int, device, dry: bool, flops: int) -> dict:
    import torch

    sync = synced(device)
    model, step = build_step(name, mode, device, dry)
    xb = synthetic_batch(name, batch, device)
    if mode.endswith("channels_last"):
        xb = (xb[0].contiguous(memory_format=torch.channels_last), xb[1])
    t0 = time.perf_counter()
    for _ in range(2):  # warm-up; with torch.compile this includes compilation
        step(xb)
    sync()
    warm = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(xb)
    sync()
    dt = (time.perf_counter() - t0) / steps
    peak = PEAK_TFLOPS["bf16" if mode.startswith("bf16") else "fp32"]
    row = {
        "config": name, "mode": mode, "batch": batch, "params": sum(p.numel() for p in model.network.parameters()),
        "s_per_step": dt, "img_per_s": batch / dt, "tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / dt / 1e12, "fraction_of_peak": flops / dt / 1e12 / peak,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }
    if mode.endswith("compile"):
        row["compile_s"] = max(0.0, warm - 2 * dt)
    return row


def part_throughput(args, device, result: dict, cap: Budget) -> None:
    """Every config in fp32, bf16 and bf16 + channels-last first, then the compiled rows as time allows."""
    import torch

    rows = result.setdefault("throughput", [])
    counts = result.setdefault("flops", {})
    batches = {name: 2 if args.dry_run else paper_batch for name, (_, paper_batch) in PAPER.items()}
    for name, batch in batches.items():
        try:
            total, by_op = step_flops(name, batch, device, args.dry_run)
            counts[name] = {"batch": batch, "tflop_per_step": total / 1e12, "by_operator": by_op}
        except Exception as err:  # noqa: BLE001 (recorded, the run goes on)
            counts[name] = {"error": f"flop count: {err!r}"}
    for mode in MODES if not args.dry_run else MODES[:-1]:
        for name, batch in batches.items():
            if "tflop_per_step" not in counts[name]:
                continue
            if cap.left() < 0:
                rows.append({"config": name, "mode": mode, "skipped": "time cap"})
                continue
            try:
                rows.append(measure_training_step(name, mode, batch, 1 if args.dry_run else args.steps, device,
                                                  args.dry_run, int(counts[name]["tflop_per_step"] * 1e12)))
                r = rows[-1]
                log(f"throughput {name} {mode}: {r['img_per_s']:.1f} img/s, {100 * r['fraction_of_peak']:.1f}% of "
                    f"peak, {r['peak_memory_gib'] or 0:.1f} GiB")
            except Exception as err:  # noqa: BLE001
                rows.append({"config": name, "mode": mode, "error": repr(err), "trace": traceback.format_exc()[-2000:]})
                log(f"throughput {name} {mode}: FAILED {err!r}")
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()


def part_sampling(args, device, result: dict, cap: Budget) -> None:
    import torch

    from jointdiff.diffusion.conditional import steer_features
    from jointdiff.diffusion.ddim import ddim_sample
    from jointdiff.diffusion.guidance import guidance_gradient
    from jointdiff.models import JointDiffusion
    from jointdiff.models.noise_aware import NoiseAwareClassifier
    from jointdiff.sampling.generate import auto_batch_size

    out = result.setdefault("sampling", {})
    model = JointDiffusion(**{**model_args("fmnist", args.dry_run), "noisy_classifier": "replace"}).to(device).eval()
    classifier_cfg = yaml.safe_load((REPO / "configs/paper/models/noise_classifier.yaml").read_text())
    clf_args = {k: v for k, v in classifier_cfg["model"]["init_args"].items()
                if k in ("model_channels", "channel_mult", "num_res_blocks", "attention_downsample", "head_channels")}
    if args.dry_run:
        clf_args.update(model_channels=32, num_res_blocks=1, head_channels=32)
    clf = NoiseAwareClassifier(image_size=28, channels=1, num_classes=10,
                               diffusion_steps=model.diffusion.num_steps, **clf_args).to(device).eval()
    net, diffusion = model.network, model.diffusion
    t0 = time.perf_counter()
    b = 4 if args.dry_run else auto_batch_size(model, "joint", 4096, torch.tensor(0))
    out["auto_batch"] = {"batch": b, "search_s": time.perf_counter() - t0}
    log(f"sampling: --batch_size auto picked {b}")
    x = torch.randn(b, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (b,), device=device)
    t = torch.full((b,), diffusion.num_steps // 2, device=device, dtype=torch.long)
    noise = torch.randn_like(x)
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16)

    def ddpm():
        with torch.no_grad():
            return diffusion.p_sample_step(x, t, net(x, t), noise)

    def ddim():
        return ddim_sample(net, diffusion, x, t[:1])

    def joint():
        with torch.enable_grad():
            middle, skips = net.encode(x.requires_grad_(True), t)
        middle, skips, _ = steer_features(net, middle, skips, t, y, 200.0)
        with torch.no_grad():
            return diffusion.p_sample_step(x, t, net.unet.decode(middle, skips, t), noise)

    def joint_bf16():
        with bf16:
            return joint()

    def guidance():
        with torch.no_grad():
            mean = diffusion.p_mean(x, t, net(x, t), clip_denoised=True)
        var = diffusion.sampling_variance[t].reshape(-1, 1, 1, 1)
        return mean + var * guidance_gradient(clf.network, x, t, y, "multiclass") + var.sqrt() * noise

    sync = synced(device)
    runs = {"ddpm": ddpm, "ddim": ddim, "joint": joint, "joint_bf16": joint_bf16, "guidance": guidance}
    rounds = 1 if args.dry_run else 5
    for name, fn in [*runs.items(), *([] if args.dry_run else [("joint_compiled", None)])]:
        if cap.left() < 0:
            out[name] = {"skipped": "time cap"}
            continue
        try:
            if name == "joint_compiled":  # the sampler with the encoder and decoder compiled (model.compile)
                net.unet.encode, net.unet.decode = torch.compile(net.unet.encode), torch.compile(net.unet.decode)
                fn = joint
            began = time.perf_counter()
            for _ in range(2):
                fn()
            sync()
            warm = time.perf_counter() - began
            times = []
            for _ in range(rounds):
                sync()
                began = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - began)
            med = statistics.median(times)
            steps = 50 if name == "ddim" else diffusion.num_steps
            out[name] = {"s_per_step": med, "img_steps_per_s": b / med, "warmup_s": warm,
                         "h_per_10k_samples": med * steps * math.ceil(10000 / b) / 3600, "steps_per_sample": steps}
            log(f"sampling {name}: {med * 1e3:.1f} ms/step at batch {b}")
        except Exception as err:  # noqa: BLE001
            out[name] = {"error": repr(err), "trace": traceback.format_exc()[-2000:]}
            log(f"sampling {name}: FAILED {err!r}")
    base = out.get("ddpm", {}).get("s_per_step")
    for row in out.values():
        if base and "s_per_step" in row:
            row["x_ddpm"] = row["s_per_step"] / base


def part_data_path(args, device, result: dict, cap: Budget) -> None:
    """Step time fed by the real loader vs. a batch already on the device."""
    from jointdiff.data import FashionMNISTDataModule

    batch = 4 if args.dry_run else 128
    steps = 2 if args.dry_run else 30
    dm = FashionMNISTDataModule(batch_size=batch, num_workers=0 if args.dry_run else 4, download=False)
    dm.setup("fit")
    sync = synced(device)
    _, step = build_step("fmnist", "bf16", device, args.dry_run)
    xb = synthetic_batch("fmnist", batch, device)
    for _ in range(2):
        step(xb)
    sync()
    began = time.perf_counter()
    for _ in range(steps):
        step(xb)
    sync()
    synthetic = (time.perf_counter() - began) / steps
    loader = iter(dm.train_dataloader())
    step(tuple(t.to(device, non_blocking=True) for t in next(loader)))  # the workers' start-up is not a step
    sync()
    began = time.perf_counter()
    for _ in range(steps):
        step(tuple(t.to(device, non_blocking=True) for t in next(loader)))
    sync()
    real = (time.perf_counter() - began) / steps
    result["data_path"] = {"batch": batch, "steps": steps, "synthetic_s_per_step": synthetic,
                           "loader_s_per_step": real, "loader_overhead": real / synthetic - 1}
    log(f"data path: loader {real * 1e3:.1f} ms/step vs on-device {synthetic * 1e3:.1f} ms/step")


def fastest_setting(result: dict) -> tuple[str, bool, bool]:
    """(Lightning precision, compile, channels_last) of the fastest Fashion-MNIST row of the throughput part."""
    rows = [r for r in result.get("throughput", []) if r.get("config") == "fmnist" and "img_per_s" in r]
    if not rows:
        return "bf16-mixed", False, False
    mode = max(rows, key=lambda r: r["img_per_s"])["mode"]
    return ("32-true" if mode == "fp32" else "bf16-mixed"), mode.endswith("compile"), mode.endswith("channels_last")


def part_training(args, device, result: dict, cap: Budget) -> None:
    precision, compile_, channels_last = fastest_setting(result)
    seconds = max(30, int(cap.left()))
    run_dir = Path(args.work) / "train"  # checkpoints stay out of <out> (the device returns 8 small files at most)
    cmd = [
        sys.executable, "-m", "jointdiff.cli", "fit", *(a for f in FMNIST_JOINT for a in ("-c", str(REPO / f))),
        "--trainer.precision", precision, "--model.init_args.compile", str(compile_).lower(),
        "--model.init_args.channels_last", str(channels_last).lower(),
        "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu",
        "--trainer.max_time", f"00:00:{seconds // 60:02d}:{seconds % 60:02d}",
        "--trainer.val_check_interval", str(args.val_every), "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.default_root_dir", str(run_dir),
        "--data.init_args.num_workers", "0" if args.dry_run else "4", "--data.init_args.download", "false",
        "--test_after_fit", "true",
    ]
    if args.dry_run:
        cmd += ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
                "--data.init_args.eval_batch_size", "16", "--data.init_args.batch_size", "4"]
        cmd += [item for k, v in DRY.items() for item in (f"--model.init_args.{k}", str(v))]
    log(f"training: {precision}, compile={compile_}, channels_last={channels_last}, up to {seconds} s, then test")
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    (Path(args.out) / "train_output.log").write_text(proc.stdout[-200000:] + proc.stderr[-200000:])
    train = {"command": " ".join(cmd), "returncode": proc.returncode, "wall_s": time.perf_counter() - began,
             "precision": precision, "compile": compile_, "channels_last": channels_last}
    metrics = sorted(run_dir.glob("**/metrics.csv"))
    if metrics:
        import csv
        import shutil

        shutil.copy(metrics[-1], Path(args.out) / "train_metrics.csv")
        grids = sorted(run_dir.glob("**/samples/*.png"))
        if grids:
            shutil.copy(grids[-1], Path(args.out) / "train_samples.png")

        with metrics[-1].open() as f:
            rows = list(csv.DictReader(f))
        keep = ("step", "val/acc", "val/acc_raw", "val/diffusion_loss", "test/acc", "test/acc_raw", "train/loss")
        train["curve"] = [{k: float(r[k]) for k in keep if r.get(k)} for r in rows
                          if any(r.get(k) for k in ("val/acc", "test/acc"))]
        steps = [int(float(r["step"])) for r in rows if r.get("step")]
        train["steps"] = max(steps) if steps else 0
    if proc.returncode:
        train["error"] = proc.stderr[-3000:]
    result["training"] = train
    log(f"training: rc {proc.returncode}, {train.get('steps', 0)} steps, curve {train.get('curve', [])[-2:]}")


def environment(device) -> dict:
    import lightning
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
           "device": str(device), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, memory_gib=props.total_memory / 2**30, sm_count=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_run.json, the training curve and its log")
    p.add_argument("--work", default="/tmp/jointdiff_gpu", help="scratch folder (the training run's checkpoints)")
    p.add_argument("--budget-s", type=float, default=510, help="wall-clock budget of the whole run")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes and a step or two of every part (CPU is fine)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per throughput row")
    p.add_argument("--val-every", type=int, default=2000, help="training: validate every N steps")
    p.add_argument("--parts", default="throughput,sampling,data_path,training")
    args = p.parse_args()

    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if not args.dry_run and device.type != "cuda":
        raise SystemExit("no CUDA device: run with --dry-run to check the script on a CPU")
    if device.type == "cuda":
        # fp32 rows measure fp32, the datasheet peak they are set against (TF32 would use the tensor cores)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    os.environ.setdefault("WANDB_MODE", "offline")
    budget = Budget(args.budget_s)
    result = {"env": environment(device), "dry_run": args.dry_run, "budget_s": args.budget_s,
              "peak_tflops": PEAK_TFLOPS}
    log(f"environment: {result['env']}")
    # shares of the budget (fractions of what is left when each part starts); training takes the rest
    shares = {"throughput": 0.40, "sampling": 0.30, "data_path": 0.15, "training": 1.0}
    for part in args.parts.split(","):
        cap = Budget(budget.left() * shares[part])
        log(f"part {part}: up to {cap.total:.0f} s")
        try:
            {"throughput": part_throughput, "sampling": part_sampling, "data_path": part_data_path,
             "training": part_training}[part](args, device, result, cap)
        except Exception as err:  # noqa: BLE001 (a failed part must not lose the others' numbers)
            result[part + "_error"] = {"error": repr(err), "trace": traceback.format_exc()[-3000:]}
            log(f"part {part}: FAILED {err!r}")
        result["elapsed_s"] = args.budget_s - budget.left()
        (out / "gpu_run.json").write_text(json.dumps(result, indent=1))
    log(f"done in {result['elapsed_s']:.0f} s: {out / 'gpu_run.json'}")


if __name__ == "__main__":
    main()
