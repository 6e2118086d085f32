"""The designed domain-adaptation experiment (docs/results.md, "Domain adaptation decided"), one unit at a time.

    JOINTDIFF_DATA_ROOT=../shared/data python experiments/evidence/da_decided.py --pairs usps:mnist --seeds 0
    python experiments/evidence/da_decided.py --units stage1 frozen --pairs mnist:usps --seeds 1   # a share of it
    python experiments/evidence/da_decided.py --report    # table into docs/results.md, plot docs/figures/da_decided.png

Per (pair, seed), in this order (a unit whose JSON exists is skipped, so the experiment resumes unit by unit and
can be shared out over processes with ``--pairs``/``--seeds``/``--units``):

- ``stage1``: joint training on the labelled source until its source validation curve is flat
  (``jointdiff adapt --until_plateau``'s rule, :class:`jointdiff.workflow.domain_adaptation.Plateau`);
- the stage-2 arms from that one stage 1, each until the target diffusion loss is flat, with a checkpoint every
  500 steps tested on the target afterwards (and after AdaBN, which makes the ``adabn`` arm free):
  ``frozen`` (route a), ``target`` (route b), ``source_control`` (frozen head, stage 2 on the source images);
- ``simultaneous``: one semi-supervised stage (``buffer``, the authors' loader) as long as stage 1 + ``frozen``'s
  stage 2;
- the references at stage 1's steps: ``source_only`` (the stand-alone classifier of ``da_decided_classifier.yaml``
  on the labelled source) and ``target_bound`` (the joint model on the labelled target), both tested on the target.

Results: ``experiments/evidence/results/da_decided/<source>_<target>_seed<k>/<unit>.json``. Training runs live in
``runs/da_decided/`` (not kept); stage 1's final weights are kept beside the results (``stage1.ckpt``, without the
optimiser state, which stage 2 does not use), so that the arms of one stage 1 can run in later sessions on other
machines. A unit interrupted mid-way starts again from its beginning.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from blocks import render_block

from jointdiff.files import atomic_write_json
from jointdiff.workflow.domain_adaptation import Plateau, run, run_simultaneous, train_stage1

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "experiments" / "evidence" / "configs" / "da_decided.yaml"
CLASSIFIER = REPO / "experiments" / "evidence" / "configs" / "da_decided_classifier.yaml"
RESULTS = REPO / "experiments" / "evidence" / "results" / "da_decided"
RUNS = REPO / "runs" / "da_decided"
PAIRS = ("usps:mnist", "mnist:usps")
SEEDS = (0, 1)
UNITS = ("stage1", "frozen", "target", "source_control", "simultaneous", "source_only", "target_bound")
ARMS = {"frozen": ("frozen", "target"), "target": ("target", "target"), "source_control": ("frozen", "source")}
PLATEAU = Plateau(every=250, min_steps=2000, max_steps=8000)
CURVE_EVERY = 500


def keep_weights(checkpoint: str, path: Path) -> None:
    """Stage 1's checkpoint without its optimiser state, written atomically."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt.pop("optimizer_states", None)
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def run_unit(unit: str, pair: str, seed: int, results: Path = RESULTS, runs: Path = RUNS,
             overrides: list[str] | None = None, plateau: Plateau = PLATEAU, curve_every: int = CURVE_EVERY) -> None:
    """One unit of one (pair, seed) (module docstring). ``overrides``: ``jointdiff fit`` arguments after the
    design's (the tests' tiny model); ``plateau`` and ``curve_every`` are the design's unless told otherwise."""
    source, target = pair.split(":")
    folder = results / f"{source}_{target}_seed{seed}"
    out = folder / f"{unit}.json"
    if out.is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    work = runs / folder.name / unit
    if work.exists():  # an interrupted attempt of this unit (only ever created here)
        shutil.rmtree(work)
    extra = ["--seed_everything", str(seed), "--data.init_args.source", source, "--data.init_args.target", target,
             *(overrides or [])]
    stage1_path = folder / "stage1.json"
    if unit == "stage1":
        record = train_stage1(str(CONFIG), str(work), extra, plateau)
        keep_weights(record["checkpoint"], folder / "stage1.ckpt")
        atomic_write_json({**record, "checkpoint": "stage1.ckpt", "unit": unit, "pair": pair, "seed": seed}, out)
        return
    if not stage1_path.is_file():
        raise SystemExit(f"{unit} of {pair} seed {seed} needs stage 1 first: run --units stage1")
    stage1 = json.loads(stage1_path.read_text())
    stage1 = {**stage1, "checkpoint": str(folder / stage1["checkpoint"])}  # kept beside its JSON
    steps1 = stage1["steps"]
    if unit in ARMS:
        head_statistics, stage2_data = ARMS[unit]
        summary = run(str(CONFIG), str(work), extra=extra, head_statistics=head_statistics, stage2_data=stage2_data,
                      plateau=plateau, stage1=stage1, curve_every=curve_every)
    elif unit == "simultaneous":
        frozen = folder / "frozen.json"
        if not frozen.is_file():
            raise SystemExit(f"simultaneous of {pair} seed {seed} runs as long as stage 1 + frozen: run frozen first")
        steps = steps1 + json.loads(frozen.read_text())["stage2"]["steps"]
        summary = run_simultaneous(str(CONFIG), str(work), [*extra, "--trainer.max_steps", str(steps)], "buffer")
    elif unit == "source_only":
        summary = train_stage1(str(CLASSIFIER), str(work), [*extra, "--trainer.max_steps", str(steps1)])
    elif unit == "target_bound":  # the joint model on the labelled target: the pair reversed, tested on itself
        reverse = ["--seed_everything", str(seed), "--data.init_args.source", target,
                   "--data.init_args.target", source, *(overrides or []), "--trainer.max_steps", str(steps1)]
        trained = train_stage1(str(CONFIG), str(work), reverse)
        summary = {**trained, "trained_on": f"{target} (labelled)",
                   "target_test": trained["source_test"], "source_test": trained["target_test"]}
    else:
        raise ValueError(unit)
    atomic_write_json({**summary, "unit": unit, "pair": pair, "seed": seed}, out)


# (unit, key of a curve point, label) of the plot's lines: target test accuracy (EMA) against the stage-2 step
LINES = [("frozen", "target_test", "frozen"), ("frozen", "target_test_adabn", "frozen + AdaBN"),
         ("target", "target_test", "target"), ("target", "target_test_adabn", "target + AdaBN"),
         ("source_control", "target_test", "source control, on the target"),
         ("source_control", "source_test", "source control, on its source")]
ACC = "test/acc_ema"


def load(results: Path = RESULTS) -> dict[str, dict[int, dict[str, dict]]]:
    """pair → seed → unit → its JSON, for every unit that finished."""
    found: dict[str, dict[int, dict[str, dict]]] = {}
    for path in sorted(results.glob("*_seed*/*.json")):
        data = json.loads(path.read_text())
        found.setdefault(data["pair"], {}).setdefault(data["seed"], {})[data["unit"]] = data
    return found


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "–"


def table(results: Path = RESULTS) -> str:
    """Per pair and arm, means over the seeds that finished it: target test accuracy (EMA) before stage 2, after it,
    after AdaBN, and the change; the source control's own (source) accuracy; the references."""
    lines = ["| pair | run | seeds | stage-2 steps | before | after (EMA / raw) | after + AdaBN | change |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for pair, seeds in sorted(load(results).items()):
        units = [seeds[k] for k in sorted(seeds)]
        for arm in ("frozen", "target", "source_control"):
            done = [u[arm] for u in units if arm in u]
            if not done:
                continue
            for domain in ("target", "source") if arm == "source_control" else ("target",):
                before = [d[f"{domain}_test_before"][ACC] for d in done]
                after = [d[f"{domain}_test_after"][ACC] for d in done]
                raw = [d[f"{domain}_test_after"]["test/acc_raw"] for d in done]
                adabn = [d[f"{domain}_test_after_adabn"][ACC] for d in done if d.get(f"{domain}_test_after_adabn")]
                change = sum(after) / len(after) - sum(before) / len(before)
                steps = sum(d["stage2"]["steps"] for d in done) / len(done)
                label = arm if arm != "source_control" else f"source control, on the {domain}"
                lines.append(f"| {pair} | {label} | {len(done)} | {steps:.0f} | {_mean(before)} | "
                             f"{_mean(after)} / {_mean(raw)} | {_mean(adabn)} | {change:+.3f} |")
        for unit, label in (("simultaneous", "simultaneous (one stage)"), ("source_only", "source-only classifier"),
                            ("target_bound", "target upper bound")):
            done = [u[unit] for u in units if unit in u]
            if done:
                key = "target_test"
                lines.append(f"| {pair} | {label} | {len(done)} | – | – | "
                             f"{_mean([d[key][ACC] for d in done])} / "
                             f"{_mean([d[key]['test/acc_raw'] for d in done])} | – | – |")
    return "\n".join(lines) if len(lines) > 2 else "(no unit finished yet)"


def plot(path: Path, results: Path = RESULTS) -> Path:
    """Target test accuracy (EMA) against the stage-2 step, one line per arm (mean over the seeds that reached the
    step; step 0 is stage 1's weights), the references as horizontal lines; one panel per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = load(results)
    pairs = sorted(found) or ["(none)"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.2), squeeze=False)
    for ax, pair in zip(axes[0], pairs, strict=True):
        units = list(found.get(pair, {}).values())
        for unit, key, label in LINES:
            by_step: dict[int, list[float]] = {}
            for u in units:
                if unit not in u:
                    continue
                domain = "source" if key == "source_test" else "target"
                by_step.setdefault(0, []).append(u[unit][f"{domain}_test_before"][ACC])
                for point in u[unit].get("curve", []):
                    if key in point:
                        by_step.setdefault(point["step"], []).append(point[key][ACC])
            if by_step:
                steps = sorted(by_step)
                ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], marker=".", label=label,
                        linestyle="--" if key == "source_test" else "-")
        for unit, label, style in (("source_only", "source-only classifier", ":"),
                                   ("target_bound", "target upper bound", "-."),
                                   ("simultaneous", "simultaneous (final)", (0, (1, 3)))):
            values = [u[unit]["target_test"][ACC] for u in units if unit in u]
            if values:
                ax.axhline(sum(values) / len(values), color="grey", linestyle=style, label=label)
        ax.set(title=pair.replace(":", " → "), xlabel="stage-2 step", ylabel="test accuracy (EMA)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=PAIRS)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--units", nargs="+", default=list(UNITS), choices=UNITS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--report", action="store_true",
                        help="only render the table into docs/results.md and the plot into docs/figures/da_decided.png")
    args = parser.parse_args()
    if args.report:
        print(table())
        render_block(REPO / "docs" / "results.md", "da_decided", table())
        print(plot(REPO / "docs" / "figures" / "da_decided.png"))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    for pair in args.pairs:
        for seed in args.seeds:
            for unit in [u for u in UNITS if u in args.units]:
                print(f"== {pair} seed {seed}: {unit}", flush=True)
                run_unit(unit, pair, seed)


if __name__ == "__main__":
    main()
