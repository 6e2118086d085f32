"""Finished runs on disk, read back and classified by what they ran (for ``jointdiff report``).

A run folder is one with a ``metrics.json`` (written by :class:`jointdiff.callbacks.MetricsJSON`) and the
``config.yaml`` LightningCLI saves beside it. What a run *is* (method, dataset, labelled share, domain-adaptation
stage) is read from that resolved config, never guessed from folder names, so a run launched by hand, by
``jointdiff paper``, by a sweep or on SLURM is classified the same way. Generative scores come from the test section
of ``metrics.json`` (``test/gen_<extractor>/<metric>_<convention>``) or, when absent, the last test record of
``generative_eval.json``; α sweeps from ``alpha_sweep.json`` (``jointdiff alpha-sweep`` / ``jointdiff sweep alpha``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jointdiff.runs import RUN_RECORD, read_json, run_failure

DATASET_OF_CLASS = {
    "FashionMNISTDataModule": "fashion_mnist", "SVHNDataModule": "svhn", "CIFAR10DataModule": "cifar10",
    "CIFAR100DataModule": "cifar100", "CelebADataModule": "celeba", "MalariaDataModule": "malaria",
    "MNISTDataModule": "mnist", "USPSDataModule": "usps",
}
DATASET_NAMES = {
    "fashion_mnist": "F-MNIST", "svhn": "SVHN", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "celeba": "CelebA",
    "malaria": "MALARIA", "mnist": "MNIST", "mnist32": "MNIST (32 px, 3 ch)", "usps": "USPS",
    "svhn_mnist": "SVHN→MNIST", "usps_mnist": "USPS→MNIST", "mnist_usps": "MNIST→USPS",
}


@dataclass
class RunResult:
    """One finished (or at least fitted) run."""

    path: Path
    model: str  # class name
    method: str  # joint | joint_noisy | ddpm | classifier | probe | noise_classifier | pdae | joint_adapted | …
    dataset: str  # key of DATASET_NAMES (a domain-adaptation pair for DomainAdaptationDataModule)
    labelled_pct: float  # 100 when every training label is used
    steps: int  # optimizer steps trained
    max_steps: int | None
    fit: dict
    test: dict
    generative: dict = field(default_factory=dict)  # "<extractor>/<convention>" → {fid, precision_prd, …}
    mtime: float = 0.0
    attempts: int = 1
    stage: str | None = None  # domain adaptation: source | target
    augmentation: str | None = None  # classifier_augmentation (D5): Table 5 runs use "off"
    failed: str | None = None  # why this run is not a result (its last attempt failed, non-finite metrics)

    @property
    def accuracy(self) -> float | None:
        """Test accuracy in %, the number of Tables 1, 5 and 6."""
        acc = self.test.get("test/acc")
        return None if acc is None else 100.0 * float(acc)


def _load_yaml(path: Path) -> dict | None:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None


def _classify(config: dict) -> tuple[str, str, str, float, str | None] | None:
    model = config.get("model") or {}
    data = config.get("data") or {}
    model_cls = str(model.get("class_path", "")).rsplit(".", 1)[-1]
    data_cls = str(data.get("class_path", "")).rsplit(".", 1)[-1]
    m, d = model.get("init_args") or {}, data.get("init_args") or {}
    stage = None
    if data_cls == "DomainAdaptationDataModule":
        dataset, stage = f"{d.get('source')}_{d.get('target')}", d.get("stage", "source")
    elif data_cls in DATASET_OF_CLASS:
        dataset = DATASET_OF_CLASS[data_cls]
        if dataset == "mnist" and (d.get("image_size") == 32 or d.get("channels") == 3):
            dataset = "mnist32"
    else:
        return None
    if model_cls == "JointDiffusion":
        if float(m.get("classifier_weight", 0.001)) == 0:
            method = "ddpm"
        elif m.get("skip_classifier_loss"):
            method = "joint_adapted"
        elif m.get("noisy_classifier", "off") != "off":
            method = "joint_noisy"
        else:
            method = "joint"
    else:
        method = {"StandaloneClassifier": "classifier", "FrozenDDPMProbe": "probe",
                  "NoiseAwareClassifier": "noise_classifier", "PDAE": "pdae"}.get(model_cls, model_cls)
    fraction = d.get("labelled_fraction")
    pct = 100.0 if fraction is None else 100.0 * float(fraction)
    if d.get("labelled_per_class") is not None:
        pct = -float(d["labelled_per_class"])  # marked negative: "<k> per class", not a share
    return model_cls, method, dataset, pct, stage


def generative_scores(test: dict, folder: Path) -> dict[str, dict[str, float]]:
    """``"<extractor>/<convention>" → {fid, precision_prd, recall_prd, …}`` of the run's test evaluation."""
    out: dict[str, dict[str, float]] = {}
    for key, value in test.items():
        if key.startswith("test/gen_"):
            extractor, metric = key[len("test/gen_"):].split("/", 1)
            name, _, convention = metric.rpartition("_")
            out.setdefault(f"{extractor}/{convention}", {})[name] = float(value)
    if out:
        return out
    path = folder / "generative_eval.json"
    if path.is_file():
        records = [r for r in (read_json(path) or {}).get("evaluations", []) if r.get("stage") == "test"]
        if records:
            return generative_scores(records[-1]["results"], folder / "__none__")
    return out


def read_run(metrics_path: Path, unreadable: list[Path] | None = None) -> RunResult | None:
    """The run whose ``metrics.json`` is ``metrics_path``; ``None`` when its config is missing or unrecognised, or
    a file is unreadable (then listed in ``unreadable``). A failed or diverged run has ``failed`` set."""
    folder = metrics_path.parent
    config = _load_yaml(folder / "config.yaml")
    if config is None:
        return None
    found = _classify(config)
    if found is None:
        return None
    model_cls, method, dataset, pct, stage = found
    metrics = read_json(metrics_path, unreadable) if metrics_path.exists() else {}
    if metrics is None:
        return None
    fit, test = metrics.get("fit", {}), metrics.get("test", {})
    record = read_json(folder / RUN_RECORD, unreadable)
    attempts = len(record.get("attempts", [])) if record else 1
    trainer = config.get("trainer") or {}
    steps = int(fit.get("global_step", test.get("global_step", 0)) or 0)
    return RunResult(
        path=folder, model=model_cls, method=method, dataset=dataset, labelled_pct=pct, steps=steps,
        max_steps=trainer.get("max_steps"), fit=fit, test=test, generative=generative_scores(test, folder),
        mtime=(metrics_path if metrics_path.exists() else folder / RUN_RECORD).stat().st_mtime,
        attempts=max(attempts, 1), stage=stage,
        augmentation=((config.get("model") or {}).get("init_args") or {}).get("classifier_augmentation"),
        failed=run_failure(folder, metrics),
    )


def collect_runs(roots: list[str | Path], unreadable: list[Path] | None = None) -> list[RunResult]:
    """Every classifiable run under ``roots`` (recursively), oldest first: each folder with a ``metrics.json``, and
    each failed one (a diverged run stops before it writes metrics: its ``run.json`` says why), with ``failed``."""
    runs = []
    for root in roots:
        folders = {p.parent for p in Path(root).rglob("metrics.json")}
        folders |= {p.parent for p in Path(root).rglob(RUN_RECORD)
                    if not (p.parent / "metrics.json").exists() and run_failure(p.parent, {}) is not None}
        for folder in sorted(folders):
            run = read_run(folder / "metrics.json", unreadable)
            if run is not None:
                runs.append(run)
    return sorted(runs, key=lambda r: r.mtime)


def pick(runs: list[RunResult]) -> RunResult | None:
    """The run a table cell shows: the longest-trained one, the newest among equals."""
    return max(runs, key=lambda r: (r.steps, r.mtime)) if runs else None


@dataclass
class AlphaPoint:
    alpha: float
    precision: float | None
    recall: float | None
    fid: float | None
    judge_hit_rate: float | None
    source: Path
    features: str | None


def collect_alpha_sweeps(roots: list[str | Path], unreadable: list[Path] | None = None,
                         ) -> dict[Path, list[AlphaPoint]]:
    """α-sweep rows grouped by sweep: one ``alpha_sweep.json`` with many rows (``jointdiff alpha-sweep``), or the
    single-row files of the runs of one ``jointdiff sweep`` folder (``jointdiff sweep alpha``)."""
    groups: dict[Path, list[AlphaPoint]] = {}
    for root in roots:
        for path in sorted(Path(root).rglob("alpha_sweep.json")):
            data = read_json(path, unreadable)
            if data is None:
                continue
            features = data.get("features")
            # alpha-sweep records the extractor's describe() ({"type": "inception", …}); other scripts a string
            name = (features.get("name") or features.get("type")) if isinstance(features, dict) else features
            sweep_root = next((p for p in path.parents if (p / "sweep.json").is_file()), path.parent)
            for row in data.get("rows", []):
                groups.setdefault(sweep_root, []).append(AlphaPoint(
                    float(row["alpha"]), row.get("precision"), row.get("recall"), row.get("fid"),
                    row.get("judge_hit_rate"), path, name))
    return {k: sorted(v, key=lambda p: p.alpha) for k, v in groups.items()}


def collect_sweeps(roots: list[str | Path], unreadable: list[Path] | None = None,
                   ) -> list[tuple[Path, dict, list[tuple[dict, RunResult | None]]]]:
    """Offline sweeps (``sweep.json`` of ``jointdiff sweep run``): (folder, record, [(run entry, its result)])."""
    out = []
    for root in roots:
        for path in sorted(Path(root).rglob("sweep.json")):
            record = read_json(path, unreadable)
            if record is None:
                continue
            entries = []
            for run in record.get("runs", []):
                metrics = Path(run.get("run_dir", "")) / "metrics.json"
                entries.append((run, read_run(metrics, unreadable) if metrics.is_file() else None))
            out.append((path.parent, record, entries))
    return out
