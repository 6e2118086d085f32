"""The designed validation of the respaced joint sampler (docs/sampling.md, "Respaced joint sampling: the designed
validation"): on the demo's checkpoint, the judge's hit rate, Fréchet distance and precision/recall of the joint
sampler for every (seed, steps, η, α rule) cell of the design, against the full chain of the same seed and α.

    JOINTDIFF_DATA_ROOT=../shared/data python experiments/evidence/respaced_validation.py \\
        --checkpoint runs/demo/version_0/checkpoints/last.ckpt --seeds 0 1 2
    python experiments/evidence/respaced_validation.py --table      # the summary table into docs/sampling.md
    python experiments/evidence/respaced_validation.py --rules      # reading rules 1-4 on the same files

One result file per cell under ``experiments/evidence/results/respaced_validation/demo_<sha256[:12]>/``, one folder
per checkpoint (a finished cell is skipped, so the run resumes and can be split over processes with ``--seeds``).
The checkpoint itself is copied into its folder (``checkpoint.ckpt``, committed with the results): training is not
bit-reproducible across machines, so a validation that spans sessions continues on that copy
(``--checkpoint experiments/evidence/results/respaced_validation/demo_<sha>/checkpoint.ckpt``). The cells of one
seed run on one machine (paired chains; float kernels differ slightly between machines).
The judge is the LeNet-5 of ``judge.py``, trained once (2 epochs, seed 0) and shared by every cell through
``judge.pt`` (kept beside the results, shared by every checkpoint); its 84-d features score 2,000 test images.
Every α of a cell starts from the same per-sample seeds (paired chains). Every result records the checkpoint's
SHA-256; the folder of a checkpoint holds only its own cells, so a later process (or machine) continues the
experiment of the same checkpoint and never mixes two models in one table. ``--table`` renders the folder of
``--checkpoint`` (or the one named by ``--results``) into docs/sampling.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import time
from pathlib import Path

import torch
from blocks import render_block
from judge import LeNet5, as_saved, train_judge

from jointdiff.data import FashionMNISTDataModule
from jointdiff.files import atomic_write_json
from jointdiff.sampling.alpha_sweep import run_alpha_sweep
from jointdiff.sampling.loading import load_diffusion_model

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "evidence" / "results" / "respaced_validation"
ALPHAS = (0, 50, 100, 200, 500)
# (steps, η, α rule); steps None = the full chain (ancestral, all T steps). Run in this order (what reading rule 2
# needs first: the full chain and the 50-step cells), every cell for one seed before the next seed.
CELLS = [(None, None, None)] + [(50, eta, "same") for eta in (1.0, 0.5, 0.0)] \
    + [(n, eta, "same") for n in (25, 100) for eta in (1.0, 0.5, 0.0)] + [(50, 1.0, "stride")]
CELL_CHOICES = ["all", "50", "25", "stride", "100", "25:1"]  # "25:1": the 25-step cell at η = 1 only
NUM_PER_CLASS, NUM_REAL, JUDGE_EPOCHS, JUDGE_SEED = 20, 2000, 2, 0


def cell_name(seed: int, steps: int | None, eta: float | None, rule: str | None) -> str:
    return f"seed{seed}_all" if steps is None else f"seed{seed}_steps{steps}_eta{eta:g}_{rule}"


def judge_of(data) -> tuple[torch.nn.Module, float]:
    """The shared judge: trained once, then loaded by every process."""
    path = RESULTS / "judge.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        judge = LeNet5()
        judge.load_state_dict(saved["state_dict"])
        return judge.eval(), float(saved["test_accuracy"])
    judge, acc = train_judge(data, JUDGE_EPOCHS, JUDGE_SEED)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": judge.state_dict(), "test_accuracy": acc}, tmp)
    tmp.replace(path)
    return judge, acc


def cell_labels(steps: int | None, eta: float | None, rule: str | None) -> set[str]:
    """The ``--cells`` names that select this cell."""
    if steps is None:
        return {"all"}
    if rule == "stride":
        return {"stride"}
    return {str(steps), f"{steps}:{eta:g}"}


def results_dir(digest: str) -> Path:
    return RESULTS / f"demo_{digest[:12]}"


def cell_order(cell: tuple, cells: list[str] | None) -> int:
    return 0 if not cells else min(cells.index(c) for c in cell_labels(*cell) if c in cells)


def run(checkpoint: str, seeds: list[int], batch_size: int, cells: list[str] | None = None) -> None:
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    folder = results_dir(digest)
    print(f"checkpoint sha256 {digest[:12]}…: results in {folder}", flush=True)
    kept = folder / "checkpoint.ckpt"
    if not kept.is_file():  # the model of these results, kept with them (atomically: a copy, then a rename)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint, kept.with_suffix(".tmp"))
        kept.with_suffix(".tmp").replace(kept)
    data = FashionMNISTDataModule()
    data.setup("fit")
    data.setup("test")
    judge, judge_acc = judge_of(data)
    print(f"judge: LeNet-5, test accuracy {judge_acc:.4f}", flush=True)
    real, _ = data.test_set.__getitems__(list(range(NUM_REAL)))
    with torch.no_grad():
        real_features = judge.features(as_saved(real))
    model = load_diffusion_model(checkpoint)
    classes = list(range(model.hparams.num_classes))
    for seed in seeds:
        chosen = [c for c in CELLS if not cells or cell_labels(*c) & set(cells)]
        for steps, eta, rule in sorted(chosen, key=lambda c: cell_order(c, cells)):
            out = folder / f"{cell_name(seed, steps, eta, rule)}.json"
            if out.is_file():
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            began = time.perf_counter()
            print(f"cell {out.stem}", flush=True)
            alphas = [a for a in ALPHAS if rule != "stride" or a > 0]  # α = 0 is the same for both rules
            rows = run_alpha_sweep(
                model, alphas, classes, NUM_PER_CLASS, judge=lambda x: judge(as_saved(x)),
                features=lambda x: judge.features(as_saved(x)), real_features=real_features, seed=seed,
                batch_size=batch_size, clip_denoised=True, steps=steps, eta=0.0 if eta is None else eta,
                respaced_alpha=rule or "same",
            )
            atomic_write_json({
                "checkpoint": checkpoint, "checkpoint_sha256": digest, "seed": seed,
                "steps": steps or model.diffusion.num_steps,
                "eta": eta, "respaced_alpha": rule, "num_per_class": NUM_PER_CLASS, "clip_denoised": True,
                "judge": "LeNet-5 (experiments/evidence/judge.py)", "judge_test_accuracy": judge_acc,
                "num_real": NUM_REAL, "threads": torch.get_num_threads(),
                "seconds": time.perf_counter() - began, "rows": rows,
            }, out)


def table(folder: Path) -> str:
    """Mean ± standard deviation over seeds per (sampler, α), with the gap to the full chain of the same seeds."""
    cells: dict[tuple, dict[float, list[dict]]] = {}
    for path in sorted(folder.glob("seed*.json")):
        data = json.loads(path.read_text())
        full = data["eta"] is None
        key = ("all", None, None) if full else (data["steps"], data["eta"], data["respaced_alpha"])
        for r in data["rows"]:
            cells.setdefault(key, {}).setdefault(r["alpha"], []).append({**r, "seed": data["seed"]})
    if not cells:
        return "(not run yet)"
    full = cells.get(("all", None, None), {})

    def stat(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    lines = ["| steps | η | α rule | α | seeds | judge hit rate | gap to full chain | FD (judge features) | "
             "precision | recall |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    order = sorted(cells, key=lambda k: (k[0] == "all", k[0] if k[0] != "all" else 0, k[1] or 0, k[2] or ""))
    for key in order:
        for alpha in sorted(cells[key]):
            rows = cells[key][alpha]
            ref = {r["seed"]: r["judge_hit_rate"] for r in full.get(alpha, [])}
            gaps = [r["judge_hit_rate"] - ref[r["seed"]] for r in rows if r["seed"] in ref]
            gap = stat(gaps) if gaps and key[0] != "all" else "–"
            steps, eta, rule = key
            lines.append(f"| {steps} | {'–' if eta is None else f'{eta:g}'} | {rule or '–'} | {alpha:g} | "
                         f"{len(rows)} | {stat([r['judge_hit_rate'] for r in rows])} | {gap} | "
                         f"{statistics.mean(r['fid'] for r in rows):.1f} | "
                         f"{statistics.mean(r['precision'] for r in rows):.3f} | "
                         f"{statistics.mean(r['recall'] for r in rows):.3f} |")
    return "\n".join(lines)


RULE_ALPHAS = (50, 100, 200)  # the α at which reading rules 1-3 compare a cell with the full chain
MATCH = -0.05  # rule 1: a cell matches when its mean gap is at least this at every α of RULE_ALPHAS


def _cells_of(folder: Path) -> dict[tuple, dict[int, dict[float, dict]]]:
    """(steps or "all", η, rule) → seed → α → row."""
    cells: dict[tuple, dict[int, dict[float, dict]]] = {}
    for path in sorted(folder.glob("seed*.json")):
        data = json.loads(path.read_text())
        key = ("all", None, None) if data["eta"] is None else (data["steps"], data["eta"], data["respaced_alpha"])
        cells.setdefault(key, {})[data["seed"]] = {float(r["alpha"]): r for r in data["rows"]}
    return cells


def read_rules(folder: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """The design's reading rules 1-4 (docs/sampling.md) applied to the result files of ``folder``, on the seeds in
    ``seeds`` only. ``complete`` says whether every cell the rules read has every one of those seeds; a reading of an
    incomplete table is printed as such and decides nothing."""
    cells = _cells_of(folder)
    full = cells.get(("all", None, None), {})

    def summary(key) -> dict | None:
        runs = cells.get(key, {})
        common = [s for s in seeds if s in runs and s in full]
        if not common:
            return None
        gaps = {a: statistics.mean(runs[s][a]["judge_hit_rate"] - full[s][a]["judge_hit_rate"] for s in common)
                for a in RULE_ALPHAS}
        fd = statistics.mean(runs[s][a]["fid"] for s in common for a in RULE_ALPHAS)
        return {"seeds": common, "gap": gaps, "mean_gap": statistics.mean(gaps.values()), "mean_fd": fd,
                "matches": all(g >= MATCH for g in gaps.values())}

    def choose_eta(steps: int) -> tuple[float | None, dict]:
        found = {eta: summary((steps, eta, "same")) for eta in (0.0, 0.5, 1.0)}
        found = {eta: v for eta, v in found.items() if v is not None}
        if not found:
            return None, {}
        matching = {eta: v for eta, v in found.items() if v["matches"]}
        if matching:
            return min(matching, key=lambda eta: matching[eta]["mean_fd"]), found
        return max(found, key=lambda eta: found[eta]["mean_gap"]), found

    eta, at50 = choose_eta(50)
    same, stride = summary((50, 1.0, "same")), summary((50, 1.0, "stride"))
    rule = "same"
    if same and stride and stride["mean_gap"] > same["mean_gap"] + 0.05 and stride["mean_fd"] <= same["mean_fd"]:
        rule = "stride"
    steps: int | str = "all"
    read = [(50, e, "same") for e in (0.0, 0.5, 1.0)] + [(50, 1.0, "stride")]  # rules 2 and 3
    for n in (25, 50, 100):  # rule 4 reads the default η's cells up to the first that matches
        read.append((n, eta, "same"))
        cell = summary((n, eta, "same")) if eta is not None else None
        if cell is not None and cell["matches"]:
            steps = n
            break
    complete = bool(full) and all(s in full for s in seeds) and all(
        all(s in cells.get(k, {}) for s in seeds) for k in read)
    return {
        "seeds": list(seeds), "complete": complete, "eta": eta, "cells_at_50": at50,
        "eta_at": {n: choose_eta(n)[0] for n in (25, 100)}, "alpha_rule": rule, "same": same, "stride": stride,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/demo/version_0/checkpoints/last.ckpt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch_size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cells", nargs="+", default=None, choices=CELL_CHOICES,
                        help="only these cells, in this order (default: all, in the design's order)")
    parser.add_argument("--table", action="store_true",
                        help="only print the summary table of the result files and write it into docs/sampling.md")
    parser.add_argument("--results", default=None,
                        help="with --table: this results folder instead of the one of --checkpoint")
    parser.add_argument("--block", default="respaced_validation", help="with --table: the docs/sampling.md block")
    parser.add_argument("--rules", action="store_true",
                        help="only print the reading rules' outcome on the result files (--results or --checkpoint)")
    args = parser.parse_args()
    if args.rules:
        folder = Path(args.results) if args.results else results_dir(
            hashlib.sha256(Path(args.checkpoint).read_bytes()).hexdigest())
        print(json.dumps(read_rules(folder, tuple(args.seeds)), indent=1))
        return
    if args.table:
        folder = Path(args.results) if args.results else results_dir(
            hashlib.sha256(Path(args.checkpoint).read_bytes()).hexdigest())
        print(table(folder))
        render_block(REPO / "docs" / "sampling.md", args.block, table(folder))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.checkpoint, args.seeds, args.batch_size, args.cells)
    print(table(results_dir(hashlib.sha256(Path(args.checkpoint).read_bytes()).hexdigest())))


if __name__ == "__main__":
    main()
