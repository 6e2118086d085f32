"""Printing, checking and running the training runs behind the paper's tables (:func:`paper`, the list itself is
:mod:`jointdiff.workflow.paper`); the command is ``jointdiff paper`` (usage in :mod:`jointdiff.commands.paper`)."""

from __future__ import annotations

import sys
from pathlib import Path

from jointdiff.runs import read_json, run_failure
from jointdiff.workflow.launch import Job, run_locally
from jointdiff.workflow.paper import PaperRun, paper_runs, select


def _finished(run: PaperRun, quick: bool, root: str) -> bool:
    """Tested, with finite metrics, and its last attempt not failed (a diverged run is re-run, never counted)."""
    folder = run.run_dir(quick, root)
    metrics = read_json(folder / "metrics.json")
    return metrics is not None and "test" in metrics and run_failure(folder, metrics) is None


def paper(
    tables: list[str | int] | None = None,
    only: list[str] | None = None,
    quick: bool = False,
    run: bool = False,
    check: bool = False,
    force: bool = False,
    keep_going: bool = False,
    root: str = "runs",
) -> list[str]:
    """Print, check (``--check``) or run (``--run``) the paper's training runs.

    Args:
        tables: tables to reproduce: 1, 2, 5, 6, malaria (default all); runs they need come along.
        only: keep runs whose key starts with one of these (e.g. ``fashion_mnist/``, ``table6/usps_mnist``).
        quick: the CPU smoke variant of each run (configs/base/cpu_quick.yaml, tiny UNet, runs/quick/).
        run: run them here, one after another.
        check: build each run's trainer, model and DataModule without training (reads no data).
        force: with ``--run``, also re-run runs that already finished.
        keep_going: with ``--run``, continue after a failed run.
        root: folder of the run folders.
    """
    runs = select(paper_runs(), [str(t) for t in tables] if tables else None, only)
    if not runs:
        raise ValueError("no paper run matches --tables/--only")
    if check:
        return _check(runs, quick, root)
    lines = []
    for r in runs:
        lines.append(f"# {r.key}  (Table {', '.join(r.tables)}{'; ' + r.note if r.note else ''})")
        lines.append(r.shell(quick, root))
    if not run:
        print("\n".join(lines))
        return lines
    todo = [r for r in runs if force or not _finished(r, quick, root)]
    for r in runs:
        if r not in todo:
            print(f"skipping {r.key}: {r.run_dir(quick, root)} already finished (--force re-runs it)")
    jobs = []
    for r in todo:
        argv, env = r.command(quick, root)
        jobs.append(Job(r.key, argv, r.run_dir(quick, root), env, {"tables": r.tables},
                        set_run_dir=r.kind == "fit"))
    manifest = Path(root) / ("quick" if quick else "paper") / "paper_runs.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    results = run_locally(jobs, manifest, {"tables": tables, "only": only, "quick": quick}, keep_going)
    return [f"{r['name']}: {r['status']}" for r in results]


def _check(runs: list[PaperRun], quick: bool, root: str) -> list[str]:
    from jointdiff.workflow.compose import instantiate

    out, failed = [], 0
    for r in runs:
        if r.kind == "fit" and any(a.startswith("--model.init_args.checkpoint=") for a in r.args):
            ckpt = next(a.split("=", 1)[1] for a in r.fit_args(quick, root)
                        if a.startswith("--model.init_args.checkpoint="))
            if not Path(ckpt).is_file():
                out.append(f"SKIP {r.key}: needs {ckpt} (train {', '.join(r.needs)} first)")
                print(out[-1], flush=True)
                continue
        args = r.fit_args(quick, root)
        try:
            cli = instantiate(args)
            n = sum(p.numel() for p in cli.model.parameters())
            out.append(f"OK   {r.key}: {type(cli.model).__name__} ({n:,} parameters, any EMA copy included) on "
                       f"{type(cli.datamodule).__name__}")
        except (Exception, SystemExit) as err:  # the CLI reports config errors by SystemExit
            failed += 1
            out.append(f"FAIL {r.key}: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err) else ''}")
        print(out[-1], flush=True)
    if failed:
        print(f"{failed} of {len(runs)} runs failed to build", file=sys.stderr)
        raise SystemExit(1)
    return out
