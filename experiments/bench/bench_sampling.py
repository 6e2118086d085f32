"""Cost of one reverse step and of 10k samples: ancestral DDPM, DDIM, joint conditional (docs/design.md §5.1) on all T
steps and on a respaced grid (η-DDIM), and classifier guidance (§5.3); every step is one step of the engine
(``jointdiff.diffusion.engine.reverse_process``) as the samplers run it. ``--phases`` also splits the joint step
into its parts (encoder pass with a graph, head, backward to the features, decoder pass) against the unconditional
step's encoder and decoder passes, to show where its extra cost lies.

    python experiments/bench/bench_sampling.py                          # FMNIST C=32 sizes, batch 64, CPU
    python experiments/bench/bench_sampling.py --size paper --batch 16  # the paper's FMNIST sizes (slow on CPU)
    python experiments/bench/bench_sampling.py --size demo --batch 256 --noise   # + the per-sample noise draw

``c32``: the UNet and head of configs/demo.yaml before it shrank to C=16 (C=32, (1,2,2), 1 ResBlock,
middle attention, T=500, 10 classes) and a CPU-sized EncoderUNet noise-aware classifier (C=32, 1 ResBlock per
level, middle attention, 32 channels per head). ``paper``:
joint.yaml's UNet (C=64, 3 ResBlocks, attention at full resolution) and noise_classifier.yaml's classifier (ADM: C=128,
2 ResBlocks, attention at the reference resolutions). The guided DDPM is the same UNet as the joint model.
Weights are random (cost does not depend on them). The three steps are timed interleaved, round after round, so
that load from other processes hits them alike; the table gives the median and the ratio to the unconditional
step measured in the same run. "per 10k samples" is the median step time × the number of reverse steps a
sample needs (T = 500 for DDPM, joint conditional sampling and guidance; ``--ddim_steps`` for DDIM and the respaced
joint sampler) × ⌈10000 / batch⌉ batches, an extrapolation at this batch size. ``demo``: the demo's network
(configs/demo.yaml: C=16, GroupNorm 16). ``--noise`` also times one step's per-sample noise for the batch: the keyed
draw the samplers use (``PerSampleNoise``, one batched computation on the device) against the per-sample CPU
generators it replaced (one ``randn`` per sample, stacked and moved to the device), as a share of the step.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from jointdiff.diffusion.conditional import ClassSteering
from jointdiff.diffusion.engine import PerSampleNoise, reverse_process, sample_seed
from jointdiff.diffusion.gaussian import GaussianDiffusion
from jointdiff.diffusion.guidance import guidance_shift
from jointdiff.models.joint import JointDiffusion
from jointdiff.models.noise_aware import NoiseAwareClassifier
from jointdiff.tasks import classification_loss

SIZES = {
    "demo": (dict(model_channels=16, norm_groups=16, channel_mult=[1, 2, 2], num_res_blocks=1, attention_downsample=[]),
             dict(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, attention_downsample=[],
                  head_channels=32)),
    "c32": (dict(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, attention_downsample=[]),
              dict(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, attention_downsample=[],
                   head_channels=32)),
    "paper": (dict(model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=3, attention_downsample=[1]),
              dict(model_channels=128, channel_mult=[1, 2, 2], num_res_blocks=2, head_channels=64)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (each times all three steps once)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", choices=sorted(SIZES), default="c32", help="network sizes (see above)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ddim_steps", type=int, default=50,
                        help="respaced steps per sample of DDIM and the respaced joint sampler (per-10k column)")
    parser.add_argument("--phases", action="store_true", help="also time the parts of the joint step")
    parser.add_argument("--noise", action="store_true", help="also time one step's per-sample noise draw")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    unet_args, classifier_args = SIZES[args.size]
    joint = JointDiffusion(image_size=28, channels=1, num_classes=10, diffusion_steps=500, noisy_classifier="replace",
                           **unet_args).to(device).eval()
    net = joint.network.eval()
    clf = NoiseAwareClassifier(image_size=28, channels=1, num_classes=10, diffusion_steps=500,
                               **classifier_args).to(device).eval()
    logits_fn = clf.network.eval()
    diffusion: GaussianDiffusion = joint.diffusion
    b = args.batch
    x = torch.randn(b, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (b,), device=device)
    t = torch.full((b,), 250, device=device, dtype=torch.long)
    noise = torch.randn_like(x)

    engine = dict(noise=lambda shape, device, dtype: noise)  # the same ξ every time: no RNG in the timing

    def unconditional():  # one ancestral step of the engine from i = 250
        return _one_step(net, diffusion, x, "ddpm", engine)

    def ddim():  # one deterministic DDIM step from i = 250 (to the next entry of a 50-step grid)
        return _one_step(net, diffusion, x, "ddim", engine)

    steer = ClassSteering(net, y, [200.0] * diffusion.num_steps)

    def conditional():
        return _one_step(net, diffusion, x, "ddpm", engine, steer=steer)

    def conditional_respaced():
        return _one_step(net, diffusion, x, "ddim", engine, steer=steer)

    shift = guidance_shift(logits_fn, diffusion, y, 1.0, "multiclass")

    def guided():
        return _one_step(net, diffusion, x, "ddpm", engine, mean_shift=shift, clip_denoised=True)

    steps = {"unconditional": unconditional, "ddim": ddim, "joint conditional": conditional,
             "joint respaced": conditional_respaced, "classifier guidance": guided}
    T = diffusion.num_steps
    steps_per_sample = {"unconditional": T, "ddim": args.ddim_steps, "joint conditional": T,
                        "joint respaced": args.ddim_steps, "classifier guidance": T}
    if args.phases:
        steps.update(_phases(net, x, t, y))
    if args.noise:
        steps.update(_noise_draws(b, device))
    times = {k: [] for k in steps}
    for r in range(args.warmup + args.rounds):
        for name, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - began)

    params = {"joint UNet+head": sum(p.numel() for p in net.parameters()),
              "noise-aware classifier": sum(p.numel() for p in clf.network.parameters())}
    print(f"size={args.size} device={device} threads={torch.get_num_threads()} batch={b} rounds={args.rounds} "
          + " ".join(f"[{k}: {v / 1e6:.2f}M params]" for k, v in params.items()))
    base = statistics.median(times["unconditional"])
    batches = math.ceil(10000 / b)
    print(f"{'step':<22}{'median s/step':>15}{'min s/step':>13}{'× unconditional':>18}{'steps':>7}"
          f"{'h / 10k samples':>17}")
    for name, ts in times.items():
        med = statistics.median(ts)
        if name not in steps_per_sample:  # a phase of the joint step
            print(f"  {name:<20}{med:>15.4f}{min(ts):>13.4f}{med / base:>18.2f}")
            continue
        per_10k = med * steps_per_sample[name] * batches / 3600
        print(f"{name:<22}{med:>15.4f}{min(ts):>13.4f}{med / base:>18.2f}{steps_per_sample[name]:>7}{per_10k:>17.2f}")


def _one_step(net, diffusion, x, update, engine, **hooks):
    """The first (highest-noise) step of ``reverse_process`` from i = 250: ancestral to 249 (the ddpm update needs
    the contiguous grid 0…250), or DDIM to 240 (a grid of stride 10, i.e. 50 of T = 500 steps); ``on_step`` stops
    the loop after it."""
    grid = list(range(251)) if update == "ddpm" else [240, 250]

    class Stop(Exception):
        pass

    def stop(step):
        raise Stop

    try:
        reverse_process(net, diffusion, x, grid, update=update, on_step=stop, **engine, **hooks)
    except Stop:
        pass


def _noise_draws(b: int, device: torch.device) -> dict:
    """One step's noise for ``b`` samples: keyed (today's ``PerSampleNoise``) and per-sample generators (before)."""
    keyed = PerSampleNoise(0, range(b))
    generators = [torch.Generator().manual_seed(sample_seed(0, i)) for i in range(b)]
    shape = (b, 1, 28, 28)

    def keyed_draw():
        return keyed(shape, device, torch.float32)

    def generator_draws():  # the implementation before the keyed draw
        return torch.stack([torch.randn(shape[1:], generator=g) for g in generators]).to(device)

    return {"noise: keyed": keyed_draw, "noise: per-sample generators": generator_draws}


def _phases(net, x, t, y):
    """The parts of a joint step, each timed on its own (the encoder pass that records a graph is re-run for the
    backward phase, whose time is reported net of it)."""
    def encode_graph():
        with torch.enable_grad():
            return net.encode(x.detach().requires_grad_(True), t)

    def encode_plain():
        with torch.no_grad():
            return net.encode(x, t)

    features = encode_plain()

    def decode():
        with torch.no_grad():
            return net.decode(features, t)

    def head_and_backward():
        with torch.enable_grad():
            middle, skips = net.encode(x.detach().requires_grad_(True), t)
            logits = net.classify_features(middle, skips, t)
            torch.autograd.grad(classification_loss(logits, y, "multiclass", reduction="sum"), [middle, *skips])

    return {"encoder (no graph)": encode_plain, "encoder (graph)": encode_graph, "decoder": decode,
            "enc+head+backward": head_and_backward}


if __name__ == "__main__":
    main()
