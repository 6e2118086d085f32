"""The finished runs under ``runs/`` as the paper's tables, our numbers beside the paper's (``Report``,
:func:`build_report`); the command is ``jointdiff report`` (usage in :mod:`jointdiff.commands.report`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jointdiff.files import atomic_write
from jointdiff.runs import attempt_status, read_json
from jointdiff.workflow import paper_numbers as P
from jointdiff.workflow.results import (
    DATASET_NAMES,
    AlphaPoint,
    RunResult,
    collect_alpha_sweeps,
    collect_runs,
    collect_sweeps,
    pick,
    read_run,
)

GEN_PREFERENCE = ("inception/reference", "inception/standard")
DASH = "–"


def _acc(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f}"


def _cell(ours: str, paper: str) -> str:
    return f"{ours} ({paper})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _steps(run: RunResult) -> str:
    planned = f" of {run.max_steps:,}" if isinstance(run.max_steps, int) and run.max_steps > 0 else ""
    again = f", {run.attempts} attempts" if run.attempts > 1 else ""
    return f"{run.steps:,}{planned} steps{again}"


class Report:
    def __init__(self, runs: list[RunResult], alpha: dict[Path, list[AlphaPoint]], sweeps: list, output: Path,
                 roots: list[str], unreadable: list[Path] | None = None):
        # a failed or diverged run is listed as such and never fills a table cell
        self.runs = [r for r in runs if r.failed is None]
        self.failed = [r for r in runs if r.failed is not None]
        self.alpha, self.sweeps, self.output, self.roots = alpha, sweeps, output, roots
        self.unreadable = unreadable if unreadable is not None else []
        self.lines: list[str] = []
        self.plots: list[Path] = []

    def select(self, pred: Callable[[RunResult], bool]) -> RunResult | None:
        return pick([r for r in self.runs if pred(r)])

    def used(self, entries: list[tuple[str, RunResult, str]]) -> None:
        if entries:
            self.lines.append("")
            self.lines.append("Runs shown:")
            for label, run, value in entries:
                self.lines.append(f"- {label}: {value} — `{run.path}` ({_steps(run)})")
        self.lines.append("")

    # ---------------------------------------------------------------------------------------------------------
    def table1(self) -> None:
        datasets = ("fashion_mnist", "svhn", "cifar10", "cifar100")
        self.lines += ["## Table 1: classification accuracy (%), ours (paper)", ""]
        names = {"classifier": "Classifier (stand-alone)", "probe": "Ours (pre-trained DDGM probe)",
                 "joint": "Ours (joint)"}
        rows, used = [], []
        for method, label in names.items():
            row = [label]
            for ds in datasets:
                run = self.select(lambda r, m=method, d=ds: r.method == m and r.dataset == d and r.labelled_pct == 100
                                  and (m == "probe" or r.augmentation != "off") and r.accuracy is not None)
                row.append(_cell(_acc(run.accuracy if run else None), _acc(P.TABLE1[method].get(ds))))
                if run:
                    used.append((f"{DATASET_NAMES[ds]} · {label}", run, f"{run.accuracy:.2f} %"))
            rows.append(row)
        for other, values in P.TABLE1_OTHERS.items():
            rows.append([f"{other} (paper only)"] + [_cell(DASH, _acc(values.get(ds))) for ds in datasets])
        self.lines += _table(["model"] + [DATASET_NAMES[d] for d in datasets], rows)
        self.used(used)

    def _generative(self, run: RunResult) -> tuple[str, str] | None:
        scores = run.generative
        key = next((k for k in GEN_PREFERENCE if k in scores), None) or next(iter(sorted(scores)), None)
        if key is None:
            return None
        s = scores[key]
        text = f"{s.get('fid', float('nan')):.1f} / {100 * s.get('precision_prd', float('nan')):.1f} / " \
               f"{100 * s.get('recall_prd', float('nan')):.1f}"
        return (text if key.startswith("inception/") else text + " †"), key

    def _conditional(self, dataset: str) -> tuple[str, str] | None:
        """Best-FID α (D10) of the α sweeps of a model of ``dataset``."""
        best = None
        for points in self.alpha.values():
            model_run = _checkpoint_run(points[0].source)
            if model_run is None or model_run.dataset != dataset:
                continue
            scored = [p for p in points if p.fid is not None and p.alpha > 0]
            if scored:
                p = min(scored, key=lambda q: q.fid)
                if best is None or p.fid < best.fid:
                    best = p
        if best is None:
            return None
        mark = "" if best.features == "inception" else " †"
        return (f"{best.fid:.1f} / {100 * best.precision:.1f} / {100 * best.recall:.1f}{mark}",
                f"α={best.alpha:g}, {best.features} features, {best.source}")

    def table2(self) -> None:
        datasets = ("fashion_mnist", "cifar10", "cifar100", "celeba")
        self.lines += ["## Table 2: generation quality, FID / precision / recall (×100), ours (paper)", ""]
        labels = {"ddpm": "DDGM", "ddpm_guidance": "DDGM + classifier guidance", "joint": "Ours (unconditional)",
                  "joint_conditional": "Ours (conditional sampling)"}
        rows, used, notes = [], [], []
        for key, label in labels.items():
            row = [label]
            for ds in datasets:
                paper = "{:.1f} / {:.1f} / {:.1f}".format(*P.TABLE2[key][ds])
                ours = None
                if key in ("ddpm", "joint"):
                    methods = ("ddpm",) if key == "ddpm" else ("joint", "joint_noisy")
                    run = self.select(lambda r, ms=methods, d=ds: r.method in ms and r.dataset == d and r.generative)
                    if run:
                        ours, which = self._generative(run)
                        used.append((f"{DATASET_NAMES[ds]} · {label}", run, f"{ours} ({which})"))
                elif key == "joint_conditional":
                    found = self._conditional(ds)
                    if found:
                        ours = found[0]
                        notes.append(f"- {DATASET_NAMES[ds]} · {label}: {found[0]} at {found[1]}")
                row.append(_cell(ours or DASH, paper))
            rows.append(row)
        self.lines += _table(["model"] + [DATASET_NAMES[d] for d in datasets], rows)
        self.used(used)
        if notes:
            self.lines += ["Conditional sampling (the α with the best FID, decision D10):", *notes, ""]
        self.lines += ["† scores in another feature space than Inception (e.g. a project classifier, offline): "
                       "comparable only between runs scored with the same extractor, not with the paper.",
                       "DDGM + classifier guidance: `jointdiff sample --sampler guidance` writes the samples; no "
                       "command scores them yet, so this row stays empty.", ""]

    def table5(self) -> None:
        self.lines += ["## Table 5: semi-supervised accuracy (%), ours (paper)", ""]
        columns = [(ds, pct) for ds, pcts in (("svhn", (100, 5, 1)), ("cifar10", (100, 5, 1)),
                                              ("cifar100", (100, 10, 5, 1))) for pct in pcts]
        extra = sorted({(r.dataset, r.labelled_pct) for r in self.runs
                        if 0 < r.labelled_pct < 100 and r.stage is None and r.dataset not in ("svhn", "cifar10",
                                                                                              "cifar100")})
        columns += extra  # other datasets: only the shares that were run
        names = {"classifier": "Classifier", "probe": "Ours (pre-trained DDGM)", "joint": "Ours (joint)"}
        rows, used = [], []
        for method, label in names.items():
            row = [label]
            for ds, pct in columns:
                def match(r, m=method, d=ds, p=pct):
                    return (r.method == m and r.dataset == d and abs(r.labelled_pct - p) < 1e-9
                            and (p < 100 or m == "probe" or r.augmentation == "off") and r.accuracy is not None)

                run = self.select(match)
                paper = P.TABLE5[method].get(ds, {}).get(pct)
                row.append(_cell(_acc(run.accuracy if run else None), _acc(paper)))
                if run:
                    used.append((f"{DATASET_NAMES[ds]} {pct:g}% · {label}", run, f"{run.accuracy:.2f} %"))
            rows.append(row)
        self.lines += _table(["model"] + [f"{DATASET_NAMES[d]} {p:g}%" for d, p in columns], rows)
        self.lines += ["", "The paper's Table 5 used smaller networks and no augmentation (D16, D5); 100% columns "
                       "show runs with augmentation off (and probes)."]
        self.used(used)
        self.plot_fractions()

    def table6(self) -> None:
        pairs = ("svhn_mnist", "usps_mnist", "mnist_usps")
        target = {"svhn_mnist": "mnist32", "usps_mnist": "mnist", "mnist_usps": "usps"}
        self.lines += ["## Table 6: domain adaptation, target test accuracy (%), ours (paper)", ""]
        rows_def = [
            ("Classifier (source only)", "classifier", lambda r, p: r.method == "classifier" and r.dataset == p),
            ("Ours before adaptation (stage 1; not in the paper)", None,
             lambda r, p: r.method == "joint" and r.dataset == p and r.stage == "source"),
            ("Ours (joint, then diffusion-only on target)", "joint_adapted",
             lambda r, p: r.method == "joint_adapted" and r.dataset == p),
            ("Classifier on target (upper bound)", "upper_bound",
             lambda r, p: r.method == "classifier" and r.dataset == target[p] and r.labelled_pct == 100),
        ]
        rows, used = [], []
        for label, paper_key, pred in rows_def:
            row = [label]
            for pair in pairs:
                run = self.select(lambda r, f=pred, p=pair: f(r, p) and r.accuracy is not None)
                paper = P.TABLE6[paper_key].get(pair) if paper_key else None
                row.append(_cell(_acc(run.accuracy if run else None), _acc(paper)))
                if run:
                    used.append((f"{DATASET_NAMES[pair]} · {label}", run, f"{run.accuracy:.2f} %"))
            rows.append(row)
        self.lines += _table(["model"] + [DATASET_NAMES[p] for p in pairs], rows)
        self.used(used)

    def malaria(self) -> None:
        self.lines += ["## MALARIA", ""]
        run = self.select(lambda r: r.dataset == "malaria" and r.method in ("joint", "joint_noisy")
                          and r.accuracy is not None)
        self.lines.append(f"Joint model test accuracy: {_acc(run.accuracy if run else None)} % "
                          f"(paper: about {P.MALARIA_ACCURACY:.0f} %)"
                          + (f" — `{run.path}` ({_steps(run)})" if run else ""))
        for path in sorted(p for root in self.roots for p in Path(root).rglob("counterfactual.json")):
            cf = read_json(path, self.unreadable)
            if cf is None:
                continue
            self.lines.append(f"- counterfactuals `{path.parent}`: {len(cf.get('images', []))} images, the model's "
                              f"head assigns the target class to {100 * cf.get('flipped_before_own_head', 0):.0f} % "
                              f"before and {100 * cf.get('flipped_own_head', 0):.0f} % after (α={cf.get('alpha')}, "
                              f"{cf.get('reverse_steps')} reverse steps)")
        self.lines.append("")

    # plots and sweeps ----------------------------------------------------------------------------------------
    def alpha_section(self) -> None:
        if not self.alpha:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.lines += ["## Conditional sampling: precision / recall against α (Fig. 4)", ""]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for source, points in self.alpha.items():
            self.lines.append(f"`{source}` ({points[0].features or 'no'} features)")
            self.lines.append("")
            self.lines += _table(["α", "precision", "recall", "FID", "judge hit rate"], [
                [f"{p.alpha:g}", _pct(p.precision), _pct(p.recall), _num(p.fid), _pct(p.judge_hit_rate)]
                for p in points])
            self.lines.append("")
            with_pr = [p for p in points if p.precision is not None]
            if with_pr:
                label = source.name or str(source)
                ax.plot([p.alpha for p in with_pr], [100 * p.precision for p in with_pr], "o-",
                        label=f"precision ({label})")
                ax.plot([p.alpha for p in with_pr], [100 * p.recall for p in with_pr], "s--",
                        label=f"recall ({label})")
        ax.axvspan(*P.ALPHA_SWEET_SPOT, color="0.9", label="paper's sweet spot")
        ax.set_xscale("symlog", linthresh=50)  # α = 0 (unconditional) next to α in the hundreds and thousands
        ax.set_xlabel("α")
        ax.set_ylabel("%")
        self._save(fig, ax, "alpha_precision_recall.png")

    def plot_fractions(self) -> None:
        runs = [r for r in self.runs if r.stage is None and r.labelled_pct > 0 and r.accuracy is not None
                and r.method in ("classifier", "probe", "joint")
                and (r.labelled_pct < 100 or r.augmentation == "off" or r.method == "probe")]
        groups: dict[tuple[str, str], dict[float, RunResult]] = {}
        for r in runs:
            cell = groups.setdefault((r.dataset, r.method), {})
            best = cell.get(r.labelled_pct)
            if best is None or (r.steps, r.mtime) > (best.steps, best.mtime):
                cell[r.labelled_pct] = r
        if not any(len(v) >= 1 for v in groups.values()) or not any(r.labelled_pct < 100 for r in runs):
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for (ds, method), cell in sorted(groups.items()):
            xs = sorted(cell)
            ax.plot(xs, [cell[x].accuracy for x in xs], "o-", label=f"{DATASET_NAMES[ds]} · {method} (ours)")
            paper = P.TABLE5.get(method, {}).get(ds)
            if paper:
                px = sorted(paper)
                ax.plot(px, [paper[x] for x in px], "x:", alpha=0.6, label=f"{DATASET_NAMES[ds]} · {method} (paper)")
        ax.set_xscale("log")
        ax.set_xlabel("labelled share of the training set (%)")
        ax.set_ylabel("test accuracy (%)")
        self._save(fig, ax, "accuracy_vs_labelled_fraction.png")

    def _save(self, fig, ax, name: str) -> None:
        """Legend, grid, layout, then the PNG beside the report (linked from it)."""
        import matplotlib.pyplot as plt

        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        self.output.mkdir(parents=True, exist_ok=True)
        path = self.output / name
        fig.savefig(path, dpi=130)
        plt.close(fig)
        self.plots.append(path)
        self.lines += [f"![{name}]({name})", ""]

    def sweeps_section(self) -> None:
        for folder, record, entries in self.sweeps:
            metric = (record.get("metric") or {}).get("name")
            names = sorted({k for run, _ in entries for k in run.get("params", {})})
            self.lines += [f"## Sweep `{record.get('name', folder.name)}` ({record.get('method')}, `{folder}`)", ""]
            header = ["run", *names, "status", "steps", metric or "test/acc"]
            rows = []
            for run, result in entries:
                value = None
                if result is not None and result.failed is None:
                    value = result.test.get(metric or "test/acc", result.fit.get(metric or "test/acc"))
                status = attempt_status(run) if "status" in run else "?"
                if result is not None and result.failed is not None:
                    status = "failed"
                rows.append([f"{run.get('index', 0):03d}", *(str(run.get("params", {}).get(n, "")) for n in names),
                             status, str(result.steps) if result else DASH,
                             _num(value, 4) if value is not None else DASH])
            self.lines += _table(header, rows) + [""]

    def not_results(self) -> None:
        """Runs that failed or diverged, and files that could not be read: listed, never counted."""
        if self.failed:
            self.lines += ["## Failed runs (not counted)", ""]
            self.lines += _table(["folder", "method", "data", "steps", "why"], [
                [f"`{r.path}`", r.method, DATASET_NAMES.get(r.dataset, r.dataset), f"{r.steps:,}",
                 r.failed.replace("|", "/")[:200]] for r in self.failed])
            self.lines.append("")
        if self.unreadable:
            self.lines += ["## Unreadable files (skipped)", ""]
            self.lines += [f"- `{p}`" for p in sorted(set(self.unreadable))] + [""]

    def appendix(self) -> None:
        self.lines += ["## Every run found", ""]
        self.lines += _table(["folder", "method", "data", "labels", "steps", "test acc (%)"], [
            [f"`{r.path}`", r.method + (f" ({r.stage})" if r.stage else ""), DATASET_NAMES.get(r.dataset, r.dataset),
             f"{r.labelled_pct:g}%" if r.labelled_pct > 0 else f"{-r.labelled_pct:g}/class", f"{r.steps:,}",
             _acc(r.accuracy)] for r in self.runs])
        self.lines.append("")


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def _checkpoint_run(alpha_json: Path) -> RunResult | None:
    """The training run of the checkpoint an α sweep sampled from (…/<run>/checkpoints/last.ckpt)."""
    ckpt = Path((read_json(alpha_json) or {}).get("checkpoint", ""))
    for folder in (ckpt.parent.parent, ckpt.parent):
        if (folder / "metrics.json").is_file():
            return read_run(folder / "metrics.json")
    return None


def build_report(roots: list[str], output: str) -> tuple[str, list[Path]]:
    """The Markdown report of every run under ``roots`` and the plots it wrote into ``output``."""
    out = Path(output)
    unreadable: list[Path] = []
    runs = collect_runs(roots, unreadable)
    rep = Report(runs, collect_alpha_sweeps(roots, unreadable), collect_sweeps(roots, unreadable), out, roots,
                 unreadable)
    rep.lines += ["# jointdiff results", "",
                  f"{len(rep.runs)} finished runs ({len(rep.failed)} failed, {len(set(unreadable))} unreadable "
                  f"files) under {', '.join(f'`{r}`' for r in roots)}. Cells: ours (paper). "
                  "Our numbers come from the runs listed under each table, at the budgets listed there; the paper "
                  "trained 100k–500k steps on GPUs.", ""]
    for section in (rep.table1, rep.table2, rep.table5, rep.table6, rep.malaria, rep.alpha_section,
                    rep.sweeps_section, rep.not_results, rep.appendix):
        section()
    text = "\n".join(rep.lines)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.md", lambda f: f.write(text + "\n"), mode="w")
    return text, rep.plots


def report(roots: list[str] = ("runs",), output: str = "runs/report", quiet: bool = False) -> str:
    """Write ``<output>/report.md`` (and its plots) from the runs under ``roots``; print it.

    Args:
        roots: folders searched recursively for runs (``metrics.json`` + ``config.yaml``), α sweeps
            (``alpha_sweep.json``) and offline sweeps (``sweep.json``).
        output: folder of ``report.md`` and the PNG plots.
        quiet: do not print the report.
    """
    missing = [r for r in roots if not Path(r).is_dir()]
    if missing:
        raise FileNotFoundError(f"no such folder: {', '.join(missing)} (runs are written under runs/ by default)")
    text, plots = build_report(list(roots), output)
    if not quiet:
        print(text)
    print(f"wrote {Path(output) / 'report.md'}" + "".join(f", {p}" for p in plots))
    return text
