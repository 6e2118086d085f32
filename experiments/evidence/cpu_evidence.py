"""One command regenerates the CPU evidence of docs/results.md: the semi-supervised table,
the domain-adaptation table and the α sweep with an independent judge, each as a table between markers in
``docs/results.md`` and, for the α sweep, a plot in ``docs/figures/``.

    JOINTDIFF_DATA_ROOT=../shared/data python experiments/evidence/cpu_evidence.py --parts semi,da,alpha
    JOINTDIFF_DATA_ROOT=../shared/data python experiments/evidence/cpu_evidence.py --parts respaced   # docs/sampling.md
    JOINTDIFF_DATA_ROOT=../shared/data python experiments/evidence/cpu_evidence.py --parts da_stage2_lr   # a diagnostic

Every run is a ``jointdiff fit`` of a config under ``experiments/evidence/configs/`` (or the domain-adaptation and
α-sweep scripts); a finished run leaves ``experiments/evidence/results/<part>/<run>.json`` (committed: run folders
under ``runs/`` are not, and do not outlive their machine) and is skipped the next time, so the script resumes
where it stopped and parts can be run on different days. ``--render`` only rewrites the tables from the results present.
The design of each experiment is fixed in its config and here, before any number is read:

- **semi**: Fashion-MNIST, 54,000 training images (10% held out), labels kept for 1% (540, uniform, seeded) or
  100 per class (1,000); seeds 0, 1, 2 (the seed of the run and of the label draw). Joint model
  (``semi_joint.yaml``), stand-alone classifier with the same encoder and head (``semi_classifier.yaml``), and the
  head on a frozen DDPM (``semi_probe.yaml`` on ``semi_ddpm.yaml``), all on the labelled stream (a full labelled
  batch every step), 1000 steps (cut from 2000 before any run, so that the three parts fit one working session on
  2 cores), test accuracy of the EMA weights on the full 10k test split at steps 250, 500, 750 and 1000
  (checkpoints; nothing is selected). ``--seeds``, ``--budgets`` and ``--models`` split it between processes.
- **da**: USPS→MNIST and MNIST→USPS, seeds 0 and 1, stage 1 and stage 2 of ``jointdiff adapt``
  with ``experiments/evidence/configs/da.yaml``; target test accuracy before and after, raw and EMA, and the source test
  accuracy of stage 1; beside it the source-only stand-alone classifier (``da_classifier.yaml``, same steps).
- **da_stage2_lr** (a diagnostic of the da reading): as **da**, seed 0, with stage 2 at lr 1e-4 instead of 1e-3
  (``jointdiff adapt --stage2_lr``), without the source-only classifier.
- **alpha**: ``experiments/evidence/alpha_sweep_fmnist.py`` on the demo's checkpoint (``--checkpoint``), α in
  {0, 50, 100, 200, 500, 1000} with direction +1 and {200, 1000} with −1, 20 samples per class, x̂0 clamped as in
  the demo's grids (unclamped, its samples saturate: docs/results.md), an independent LeNet-5 judge (2 epochs),
  Fréchet distance in its features against 2,000 test images.
  Parts of the grid run as separate processes are merged with ``--merge_alpha FOLDER …``.
- **respaced** (``docs/sampling.md``): the joint sampler as η = 0 DDIM on 50 and 100 respaced steps of
  the same checkpoint, α in {0, 50, 100, 200}, both α rules (``same``, ``stride``), otherwise as **alpha**.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from blocks import replace_block

REPO = Path(__file__).resolve().parents[2]
RUNS = Path("runs/evidence")
RESULTS = REPO / "experiments" / "evidence" / "results"
ALPHA_SWEEP = REPO / "experiments" / "evidence" / "alpha_sweep_fmnist.py"
RESULTS_MD = REPO / "docs" / "results.md"
FIGURES = REPO / "docs" / "figures"
JOINTDIFF = [sys.executable, "-m", "jointdiff.cli"]

SEMI_BUDGETS = {
    "1%": ["--data.init_args.labelled_fraction", "0.01"],
    "100/class": ["--data.init_args.labelled_fraction", "null", "--data.init_args.labelled_per_class", "100"],
}
SEMI_MODELS = ("joint", "classifier", "probe")
SEMI_STEPS = (250, 500, 750, 1000)
DA_PAIRS = {"USPS→MNIST": ("usps", "mnist"), "MNIST→USPS": ("mnist", "usps")}
DA_STAGE2_LR = 1e-4  # the stage-2 learning-rate diagnostic: 10× below da.yaml's 1e-3
ALPHAS, FLIPPED_ALPHAS = (0, 50, 100, 200, 500, 1000), (200, 1000)


def run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def slug(text: str) -> str:
    return text.replace("%", "pct").replace("/", "per").replace("→", "_to_")


def results_path(part: str, name: str) -> Path:
    return RESULTS / part / f"{slug(name)}.json"


def save(path: Path, data: dict) -> None:
    from jointdiff.files import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(data, path)


def accuracy_on_test_split(checkpoint: Path, datamodule=None) -> dict[str, float]:
    """EMA and raw accuracy of a checkpoint on a DataModule's full test split (default: Fashion-MNIST), public API."""
    import lightning as L

    from jointdiff.data import FashionMNISTDataModule
    from jointdiff.models.checkpoints import load_model

    model = load_model(checkpoint)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    data = datamodule or FashionMNISTDataModule(eval_batch_size=500)
    out = trainer.test(model, datamodule=data, verbose=False)[0]
    return {k.removeprefix("test/"): float(out[k]) for k in ("test/acc_ema", "test/acc_raw")}


# semi-supervised ---------------------------------------------------------------------------------------------------
def semi(seeds: list[int], budgets: list[str], models: list[str] = SEMI_MODELS) -> None:
    ddpm = RUNS / "semi" / "ddpm" / "checkpoints" / "last.ckpt"
    if "probe" in models and not ddpm.is_file():
        run([*JOINTDIFF, "fit", "-c", "experiments/evidence/configs/semi_ddpm.yaml"])
    for budget in budgets:
        budget_args = SEMI_BUDGETS[budget]
        for seed in seeds:
            for model in models:
                name = f"{model}_{budget}_s{seed}"
                out = results_path("semi", name)
                if out.is_file():
                    continue
                log_name = slug(name)
                run([*JOINTDIFF, "fit", "-c", f"experiments/evidence/configs/semi_{model}.yaml", *budget_args,
                     "--seed_everything", str(seed), "--data.init_args.labelled_seed", str(seed),
                     "--trainer.logger.init_args.name", log_name])
                ckpts = sorted((RUNS / "semi" / log_name).glob("version_*/checkpoints/step=*.ckpt"))
                by_step = {int(p.stem.split("=")[1]): p for p in ckpts}  # the newest version wins
                missing = [s for s in SEMI_STEPS if s not in by_step]
                if missing:
                    raise RuntimeError(f"{name}: no checkpoint at steps {missing} under {RUNS / 'semi' / log_name}")
                save(out, {"model": model, "budget": budget, "seed": seed,
                           "test": {str(s): accuracy_on_test_split(by_step[s]) for s in SEMI_STEPS}})


def semi_table() -> str:
    rows = ["| labels | model | " + " | ".join(f"step {s}" for s in SEMI_STEPS) + " | seeds |",
            "|---|---|" + "---:|" * len(SEMI_STEPS) + "---:|"]
    for budget in SEMI_BUDGETS:
        for model in SEMI_MODELS:
            found = [json.loads(p.read_text()) for p in sorted((RESULTS / "semi").glob(
                f"{slug(f'{model}_{budget}')}_s*.json"))]
            if not found:
                continue
            cells = []
            for s in SEMI_STEPS:
                accs = [r["test"][str(s)]["acc_ema"] for r in found]
                spread = f" ± {statistics.stdev(accs):.4f}" if len(accs) > 1 else " (one seed)"
                cells.append(f"{statistics.mean(accs):.4f}{spread}")
            rows.append(f"| {budget} | {model} | " + " | ".join(cells) + f" | {len(found)} |")
    return "\n".join(rows)


# domain adaptation -------------------------------------------------------------------------------------------------
def da(seeds: list[int]) -> None:
    for pair, seed, source, target, out in unfinished_da_runs("da", seeds):
        folder = RUNS / "da" / slug(f"{pair}_s{seed}")
        summary, extra = two_stages(folder, source, target, seed)
        stage1 = Path(summary["stage1"]["checkpoint"])
        source_acc = source_test_accuracy(stage1, source, target)
        baseline = source_only_classifier(folder, source, target, extra)
        save(out, {"pair": pair, "seed": seed, "source_test": source_acc, "source_only_classifier": baseline,
                   **summary})


def unfinished_da_runs(part: str, seeds: list[int]):
    """(pair, seed, source, target, result path) of each run of a domain-adaptation part without a result file."""
    for pair, (source, target) in DA_PAIRS.items():
        for seed in seeds:
            out = results_path(part, f"{pair}_s{seed}")
            if not out.is_file():
                yield pair, seed, source, target, out


def two_stages(folder: Path, source: str, target: str, seed: int,
               stage2_lr: float | None = None) -> tuple[dict, list[str]]:
    """Both stages of ``jointdiff adapt`` on ``experiments/evidence/configs/da.yaml`` (read, not
    re-run, when ``folder`` already holds their summary); returns the summary and the arguments given to both stages."""
    extra = ["--seed_everything", str(seed), "--data.init_args.source", source, "--data.init_args.target", target]
    if not (folder / "domain_adaptation.json").is_file():
        run([*JOINTDIFF, "adapt", "--config", "experiments/evidence/configs/da.yaml",
             *(["--stage2_lr", str(stage2_lr)] if stage2_lr is not None else []), "--out", str(folder), "--",
             *extra])
    return json.loads((folder / "domain_adaptation.json").read_text()), extra


def source_only_classifier(folder: Path, source: str, target: str, extra: list[str]) -> dict:
    """The stand-alone classifier of ``da_classifier.yaml`` on the same source, seed and steps: source and target
    test accuracy (its target accuracy is the baseline the adapted joint model is compared with)."""
    from jointdiff.data import DomainAdaptationDataModule

    run([*JOINTDIFF, "fit", "-c", "experiments/evidence/configs/da_classifier.yaml", *extra,
         "--trainer.logger.init_args.save_dir", str(folder), "--trainer.default_root_dir", str(folder / "classifier")])
    ckpt = max((folder / "classifier").glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    target_data = DomainAdaptationDataModule(source=source, target=target, stage="source", eval_batch_size=500)
    return {"checkpoint": str(ckpt), "source_test": source_test_accuracy(ckpt, source, target),
            "target_test": accuracy_on_test_split(ckpt, target_data)}


def source_test_accuracy(checkpoint: Path, source: str, target: str) -> dict[str, float]:
    """Accuracy of stage 1 on the *source* test split, at the pair's shapes (the ≥ 0.90 bar)."""
    from jointdiff.data.domain_adaptation import domain_adaptation_pair

    source_data, _ = domain_adaptation_pair(source, target, eval_batch_size=500)
    return accuracy_on_test_split(checkpoint, source_data)


def da_table() -> str:
    rows = ["| pair | seed | joint: source test (EMA) | joint: target before, EMA / raw | "
            "joint: target after, EMA / raw | classifier: source test (EMA) | classifier: target, EMA / raw |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for path in sorted((RESULTS / "da").glob("*.json")):
        r = json.loads(path.read_text())
        b, a, c = r["target_test_before"], r["target_test_after"], r["source_only_classifier"]
        rows.append(f"| {r['pair']} | {r['seed']} | {r['source_test']['acc_ema']:.4f} | "
                    f"{b['test/acc_ema']:.4f} / {b['test/acc_raw']:.4f} | {a['test/acc_ema']:.4f} / "
                    f"{a['test/acc_raw']:.4f} | {c['source_test']['acc_ema']:.4f} | "
                    f"{c['target_test']['acc_ema']:.4f} / {c['target_test']['acc_raw']:.4f} |")
    return "\n".join(rows)


def da_stage2_lr(seeds: list[int]) -> None:
    """The diagnostic of docs/results.md: ``da`` with stage 2 at ``DA_STAGE2_LR``, no source-only classifier (the
    ``da`` table has it)."""
    for pair, seed, source, target, out in unfinished_da_runs("da_stage2_lr", seeds):
        folder = RUNS / "da_stage2_lr" / slug(f"{pair}_s{seed}")
        summary, _ = two_stages(folder, source, target, seed, stage2_lr=DA_STAGE2_LR)
        if summary["stage2"].get("lr") != DA_STAGE2_LR:
            raise ValueError(f"{folder}: stage 2 ran at lr {summary['stage2'].get('lr')}, not {DA_STAGE2_LR}")
        save(out, {"pair": pair, "seed": seed, **summary})


def da_stage2_lr_table() -> str:
    rows = ["| pair | seed | stage-2 lr | target before, EMA / raw | target after, EMA / raw | "
            "the `da` table's run at lr 1e-3: before → after (EMA) |", "|---|---:|---:|---:|---:|---:|"]
    for path in sorted((RESULTS / "da_stage2_lr").glob("*.json")):
        r = json.loads(path.read_text())
        b, a = r["target_test_before"], r["target_test_after"]
        same = RESULTS / "da" / path.name
        ref = json.loads(same.read_text()) if same.is_file() else None
        ref_cell = (f"{ref['target_test_before']['test/acc_ema']:.4f} → {ref['target_test_after']['test/acc_ema']:.4f}"
                    if ref else "—")
        rows.append(f"| {r['pair']} | {r['seed']} | {r['stage2']['lr']:g} | {b['test/acc_ema']:.4f} / "
                    f"{b['test/acc_raw']:.4f} | {a['test/acc_ema']:.4f} / {a['test/acc_raw']:.4f} | {ref_cell} |")
    return "\n".join(rows) if len(rows) > 2 else ""


# α sweep -----------------------------------------------------------------------------------------------------------
def alpha(checkpoint: str) -> None:
    folder = RUNS / "alpha"
    out = results_path("alpha", "sweep")
    if out.is_file():
        return
    done = folder / "alpha_sweep_all.json"  # a finished sweep of the same checkpoint is kept
    if not done.is_file() or json.loads(done.read_text())["checkpoint"] != checkpoint:
        run([sys.executable, str(ALPHA_SWEEP), "--checkpoint", checkpoint,
             "--output", str(folder), "--alphas", *map(str, ALPHAS), "--flip_alphas", *map(str, FLIPPED_ALPHAS),
             "--num_per_class", "20", "--clip_denoised"])
    data = json.loads(done.read_text())
    FIGURES.mkdir(parents=True, exist_ok=True)
    for png in folder.glob("*.png"):
        shutil.copyfile(png, FIGURES / f"alpha_sweep_fmnist_{png.name}")
    save(out, data)


def merge_alpha(folders: list[str]) -> None:
    """The α sweep run as several processes (``alpha_sweep_fmnist.py`` with parts of the α grid, the same
    checkpoint, seed and judge): one result with every row, and its plot. Refuses parts that do not match."""
    from jointdiff.sampling.alpha_sweep import write_sweep

    parts = [json.loads((Path(f) / "alpha_sweep_all.json").read_text()) for f in folders]
    same = ("checkpoint", "judge_test_accuracy", "head_accuracy_by_step", "num_per_class", "seed", "clip_denoised")
    for key in same:
        values = {json.dumps(part[key], sort_keys=True) for part in parts}
        if len(values) > 1:
            raise ValueError(f"the sweep parts differ in {key}: {sorted(values)}")
    rows = sorted((r for part in parts for r in part["rows"]), key=lambda r: (-r["direction"], r["alpha"]))
    cells = [(r["alpha"], r["direction"]) for r in rows]
    wanted = [(a, 1) for a in ALPHAS] + [(a, -1) for a in FLIPPED_ALPHAS]
    missing = [cell for cell in wanted if cell not in cells]
    if missing:
        raise ValueError(f"the sweep parts lack the rows (α, direction) {missing}")
    merged = {**parts[0], "rows": rows, "parts": [str(f) for f in folders]}
    folder = RUNS / "alpha"
    write_sweep([r for r in rows if r["direction"] == 1], folder, merged)
    FIGURES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "alpha_sweep.png", FIGURES / "alpha_sweep_fmnist_alpha_sweep.png")
    save(results_path("alpha", "sweep"), merged)


def alpha_table() -> str:
    path = results_path("alpha", "sweep")
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    keys = [k for k in ("judge_hit_rate", "own_head_hit_rate", "fid", "precision", "recall") if k in data["rows"][0]]
    rows = ["| α | direction | " + " | ".join(keys) + " |", "|---:|---:|" + "---:|" * len(keys)]
    for r in data["rows"]:
        rows.append(f"| {r['alpha']:g} | {r['direction']:+d} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + " |")
    by_step = sorted(data["head_accuracy_by_step"].items(), key=lambda kv: int(kv[0]))  # JSON keys are strings
    head = ", ".join(f"step {k}: {v:.3f}" for k, v in by_step)
    return "\n".join(rows) + (f"\n\nJudge: {data['judge']}, test accuracy {data['judge_test_accuracy']:.4f}. "
                              f"The model's own head on noised test images, by step: {head}.")


# respaced joint sampling --------------------------------------------------------------------------------------------
RESPACED_STEPS, RESPACED_ALPHAS, RESPACED_RULES = (50, 100), (0, 50, 100, 200), ("same", "stride")
SAMPLING_MD = REPO / "docs" / "sampling.md"


def respaced(checkpoint: str) -> None:
    """The joint sampler as η=0 DDIM on 50 and 100 of the T steps, both α rules, on the demo's model; the
    same judge, sample count and clamping as the α sweep (its α ≤ 200 rows are the full-T reference)."""
    for steps in RESPACED_STEPS:
        for rule in RESPACED_RULES:
            name = f"{steps}_{rule}"
            out = results_path("respaced", name)
            if out.is_file():
                continue
            folder = RUNS / "respaced" / name
            alphas = [a for a in RESPACED_ALPHAS if rule == "same" or a > 0]  # α = 0 is the same for both rules
            run([sys.executable, str(ALPHA_SWEEP), "--checkpoint", checkpoint,
                 "--output", str(folder), "--alphas", *map(str, alphas), "--num_per_class", "20", "--clip_denoised",
                 "--steps", str(steps), "--respaced_alpha", rule])
            save(out, json.loads((folder / "alpha_sweep_all.json").read_text()))


def respaced_table() -> str:
    found = sorted((RESULTS / "respaced").glob("*.json"))
    if not found:
        return ""
    rows = ["| steps | α rule | α | judge hit rate | own-head hit rate | FD (judge features) | precision | recall "
            "| seconds |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for path in found:
        data = json.loads(path.read_text())
        for r in data["rows"]:
            rows.append(f"| {data['steps']} | {data['respaced_alpha']} | {r['alpha']:g} | {r['judge_hit_rate']:.3f} | "
                        f"{r['own_head_hit_rate']:.3f} | {r['fid']:.1f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                        f"{r['seconds']:.0f} |")
    return "\n".join(rows)


# docs -------------------------------------------------------------------------------------------------------------
def render() -> None:
    """Replace each ``<!-- evidence:<part> -->`` … ``<!-- /evidence:<part> -->`` block of docs/results.md (and,
    for the respaced sampler, of docs/sampling.md)."""
    tables = {RESULTS_MD: (("semi", semi_table()), ("da", da_table()), ("da_stage2_lr", da_stage2_lr_table()),
                           ("alpha", alpha_table())),
              SAMPLING_MD: (("respaced", respaced_table()),)}
    for path, parts in tables.items():
        if not path.is_file():
            continue
        text = path.read_text()
        for part, table in parts:
            text = replace_block(text, part, table or "(not run yet)")
        path.write_text(text)
        print(f"tables written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="semi,da,alpha")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: 0 1 2 (semi), 0 1 (da), 0 (da_stage2_lr)")
    parser.add_argument("--budgets", nargs="+", default=list(SEMI_BUDGETS), choices=list(SEMI_BUDGETS),
                        help="label budgets of the semi part (two processes can share the work)")
    parser.add_argument("--models", nargs="+", default=list(SEMI_MODELS), choices=list(SEMI_MODELS),
                        help="models of the semi part (two processes can share the work)")
    parser.add_argument("--checkpoint", default="runs/demo/version_0/checkpoints/last.ckpt",
                        help="the demo's checkpoint (alpha)")
    parser.add_argument("--render", action="store_true", help="only rewrite the tables from finished runs")
    parser.add_argument("--merge_alpha", nargs="+", metavar="FOLDER", default=None,
                        help="merge α-sweep parts run as separate processes into the alpha result, then render")
    args = parser.parse_args()
    os.chdir(REPO)
    parts = args.parts.split(",")
    if args.merge_alpha:
        merge_alpha(args.merge_alpha)
    elif not args.render:
        if "semi" in parts:
            semi(args.seeds or [0, 1, 2], args.budgets, args.models)
        if "da" in parts:
            da(args.seeds or [0, 1])
        if "da_stage2_lr" in parts:
            da_stage2_lr(args.seeds or [0])
        if "alpha" in parts:
            alpha(args.checkpoint)
        if "respaced" in parts:
            respaced(args.checkpoint)
    render()


if __name__ == "__main__":
    main()
