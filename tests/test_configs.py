"""Every YAML under configs/ parses and instantiates (trainer, model, DataModule) without reading data or training.

Standalone configs (a model and a DataModule of their own) are built alone, here; fragments (configs/base,
configs/paper) in the compositions they are meant for: the training runs of the paper manifest
(:mod:`jointdiff.workflow.paper`) at the paper's budget in test_configs_paper*.py, their CPU smoke variants in
test_configs_quick.py, and the W&B / SLURM / GPU presets here (four files, to keep each under a minute).
Paper-size models are built on the ``meta`` device (shapes only; :mod:`jointdiff.workflow.compose`);
the probe and PDAE load a checkpoint in their constructor and are built for real from a tiny DDPM checkpoint made
here. A final test fails when a YAML file is in no tested composition.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import TINY_MODEL
from lightning.fabric.utilities.exceptions import MisconfigurationException

from jointdiff.models import JointDiffusion
from jointdiff.workflow import paper
from jointdiff.workflow.compose import instantiate

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FRAGMENT_DIRS = (CONFIGS / "base", CONFIGS / "paper")

# UNet parameter counts measured on the authors' model: the paper fragments must build exactly these.
SPEC_UNET_PARAMS = {"fashion_mnist": 8_799_105, "svhn": 52_542_979, "cifar10": 52_542_979, "cifar100": 52_542_979,
                    "celeba": 121_060_483, "malaria": 121_060_483}
METHOD_CLASS = {"joint": "JointDiffusion", "joint_noisy": "JointDiffusion", "ddpm": "JointDiffusion",
                "classifier": "StandaloneClassifier", "upper_bound": "StandaloneClassifier",
                "probe": "FrozenDDPMProbe", "noise_classifier": "NoiseAwareClassifier"}
DATA_CLASS = {"fashion_mnist": "FashionMNISTDataModule", "svhn": "SVHNDataModule", "cifar10": "CIFAR10DataModule",
              "cifar100": "CIFAR100DataModule", "celeba": "CelebADataModule", "malaria": "MalariaDataModule"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def is_standalone(path: Path) -> bool:
    """A config with its own model and DataModule, outside the fragment folders."""
    if any(d in path.parents for d in FRAGMENT_DIRS):
        return False
    cfg = _load(path)
    return all(isinstance(cfg.get(k), dict) and "class_path" in cfg[k] for k in ("model", "data"))


EVIDENCE_CONFIGS = REPO / "experiments" / "evidence" / "configs"
STANDALONE = sorted(p for folder in (CONFIGS, EVIDENCE_CONFIGS) for p in folder.rglob("*.yaml")
                    if is_standalone(p))
# The paper's runs live only as compositions (jointdiff.workflow.paper): no stand-alone file under configs/ is one.
NOT_PAPER_RUNS = {"configs/demo.yaml": "the CPU demo, `make demo`",
                  "configs/pdae_fashion_mnist.yaml": "PDAE, a comparison model no table of the paper trains"}


@pytest.fixture(autouse=True)
def no_data(tmp_path_factory, monkeypatch):
    """An empty data root and cache: building a DataModule must not need (or write) any file."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("JOINTDIFF_DATA_ROOT", str(base / "no-data"))
    monkeypatch.setenv("JOINTDIFF_CACHE", str(base / "no-cache"))
    monkeypatch.delenv("JOINTDIFF_RUN_DIR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(REPO)  # the configs name each other relative to the repository root
    yield
    for name in ("no-data", "no-cache"):
        folder = base / name
        assert not folder.exists() or not any(folder.rglob("*")), f"building a DataModule wrote into {folder}"


class _RandomImages(L.LightningDataModule):
    def __init__(self, size: int, channels: int):
        super().__init__()
        self.size, self.channels = size, channels

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(8, self.channels, self.size, self.size, generator=g) * 2 - 1
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(8, dtype=torch.long)),
                                           batch_size=4)


@pytest.fixture(scope="session")
def tiny_ddpm(tmp_path_factory):
    """``(image_size, channels) → path`` of a real 1-step tiny DDPM checkpoint, for the probe and PDAE configs."""
    made: dict[tuple[int, int], str] = {}

    def get(size: int, channels: int) -> str:
        if (size, channels) not in made:
            L.seed_everything(0)
            model = JointDiffusion(image_size=size, channels=channels, classifier_weight=0.0, **TINY_MODEL)
            trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, accelerator="cpu",
                                default_root_dir=tmp_path_factory.mktemp("ddpm"))
            trainer.fit(model, datamodule=_RandomImages(size, channels))
            path = tmp_path_factory.mktemp("ckpt") / f"ddpm_{size}_{channels}.ckpt"
            trainer.save_checkpoint(path)
            made[(size, channels)] = str(path)
        return made[(size, channels)]

    return get


def checkpoint_args(files: list[str], tiny_ddpm) -> list[str]:
    """Point a probe/PDAE composition at a tiny DDPM of the data's shape (the real one is trained first)."""
    merged: dict = {}
    for f in files:
        cfg = _load(REPO / f)
        for key in ("model", "data"):
            if isinstance(cfg.get(key), dict):
                merged.setdefault(key, {}).setdefault("init_args", {})
                if "class_path" in cfg[key]:
                    merged[key]["class_path"] = cfg[key]["class_path"]
                merged[key]["init_args"].update(cfg[key].get("init_args") or {})
    model = merged.get("model", {}).get("class_path", "").rsplit(".", 1)[-1]
    if model not in ("FrozenDDPMProbe", "PDAE"):
        return []
    data = merged.get("data", {})
    rgb32 = any(s in data.get("class_path", "") for s in ("CIFAR", "SVHN")) or data["init_args"].get("channels") == 3
    size, channels = (32, 3) if rgb32 else (28, 1)
    key = "checkpoint" if model == "FrozenDDPMProbe" else "pretrained"
    return [f"--model.init_args.{key}={tiny_ddpm(size, channels)}"]


def build(files: list[str], extra: list[str] = (), tiny_ddpm=None):
    """Instantiate ``jointdiff fit --config f1 --config f2 … extra`` (meta device unless probe/PDAE)."""
    args = [x for f in files for x in ("--config", f)] + list(extra)
    if tiny_ddpm is not None:
        args += checkpoint_args(files, tiny_ddpm)
    return instantiate(args)


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", STANDALONE, ids=lambda p: str(p.relative_to(REPO)))
def test_standalone_config_instantiates(path, tiny_ddpm):
    rel = str(path.relative_to(REPO))
    cli = build([rel], tiny_ddpm=tiny_ddpm)
    cfg = _load(path)
    assert type(cli.model).__name__ == cfg["model"]["class_path"].rsplit(".", 1)[-1]
    assert type(cli.datamodule).__name__ == cfg["data"]["class_path"].rsplit(".", 1)[-1]
    for key in ("image_size", "channels", "num_classes"):  # linked from the DataModule by the CLI
        assert cli.model.hparams[key] == getattr(cli.datamodule, key)
    assert cli.datamodule.train_set is None  # nothing read


def test_each_paper_run_has_one_source():
    """configs/ holds no second copy of a paper run: its stand-alone files are exactly the ones that are no paper run
    (a copy would drift from the composition `jointdiff paper` runs)."""
    standalone = {str(p.relative_to(REPO)) for p in STANDALONE if CONFIGS in p.parents}
    assert standalone == set(NOT_PAPER_RUNS)
    assert all(not any(CONFIGS / d in p.parents for d in ("base", "paper", "eval")) for p in STANDALONE)


def _expected_budget(run: paper.PaperRun) -> int:
    for f in reversed(run.configs):
        steps = (_load(REPO / f).get("trainer") or {}).get("max_steps")
        if steps is not None:
            return steps
    raise AssertionError(f"{run.key}: no fragment sets trainer.max_steps")


PAPER_RUNS = paper.paper_runs()


def representative(runs: list[paper.PaperRun]) -> list[paper.PaperRun]:
    """The runs to build: one per composition up to the labels overlay, plus one per labels overlay. (Table 5's
    runs differ from each other only by which ``labels_<pct>pct.yaml`` they append, a data-only overlay; building
    every one of them would multiply the time of this test without exercising anything new.)"""
    seen: set = set()
    out = []
    for run in runs:
        labels = [f for f in run.configs if "/labels_" in f]
        key = tuple(f for f in run.configs if f not in labels) + (run.unet,)
        if key in seen and all(f in seen for f in labels):
            continue
        seen.add(key)
        seen.update(labels)
        out.append(run)
    return out


BUILT_RUNS = representative(PAPER_RUNS)


def check_paper_run(run: paper.PaperRun, tiny_ddpm) -> None:
    """Each training run of the manifest, at the paper's budget: the model class and data are the ones the entry
    names, the architecture carried from the dataset fragment is the paper's (the reference's parameter counts), the
    budget is the fragment's, and the run folder is the manifest's."""
    extra = run.fit_args(quick=False, root="runs")[2 * len(run.configs):]
    extra = [a for a in extra if not a.startswith(("--model.init_args.checkpoint=",))]
    cli = build(list(run.configs), extra, tiny_ddpm=tiny_ddpm)
    model, dm, cfg = cli.model, cli.datamodule, cli.config["fit"]
    method = run.tags["method"]
    assert type(model).__name__ == METHOD_CLASS[method]
    ds = run.tags.get("dataset")
    if ds is not None:
        assert type(dm).__name__ == DATA_CLASS[ds]
    else:
        assert type(dm).__name__ in ("DomainAdaptationDataModule", "MNISTDataModule", "USPSDataModule")
    if method == "ddpm":
        assert model.hparams.classifier_weight == 0 and not model.has_head
    if method in ("joint", "joint_noisy"):
        assert model.hparams.classifier_weight == pytest.approx(0.001)
        assert model.hparams.noisy_classifier == ("replace" if method == "joint_noisy" else "off")
    if isinstance(model, JointDiffusion) and ds in SPEC_UNET_PARAMS and not run.key.startswith("table5/"):
        assert sum(p.numel() for p in model.network.unet.parameters()) == SPEC_UNET_PARAMS[ds]
    if run.key.startswith("table5/") and method != "probe":
        assert model.hparams.model_channels == 64 and model.hparams.classifier_augmentation == "off"  # D16, D5
        pct = run.tags.get("labelled_pct", 100)
        assert dm.labelled_fraction == (None if pct == 100 else pytest.approx(pct / 100))
    if method == "classifier" and ds in ("svhn", "cifar10", "cifar100") and not run.key.startswith("table5/"):
        assert model.hparams.model_channels == 128  # carried over from the dataset fragment
    if method == "probe":
        assert cfg.trainer.max_epochs == 50 and cfg.trainer.max_steps == -1  # D14
    elif method == "noise_classifier":
        assert cfg.trainer.max_steps == 150000 and cfg.data.init_args.batch_size == 256  # D12
    else:
        assert cfg.trainer.max_steps == _expected_budget(run)
    assert cfg.trainer.default_root_dir == str(run.run_dir(quick=False))


def test_probe_points_at_its_ddpm_run():
    runs = {r.key: r for r in PAPER_RUNS}
    for run in PAPER_RUNS:
        if run.tags["method"] != "probe":
            continue
        (ddpm,) = run.needs
        ckpt = [a for a in run.fit_args(quick=True, root="R") if a.startswith("--model.init_args.checkpoint=")]
        expected = runs[ddpm].run_dir(quick=True, root="R") / "checkpoints" / "last.ckpt"
        assert ckpt == [f"--model.init_args.checkpoint={expected}"]
        assert paper.select(PAPER_RUNS, keys=[run.key])[0].key == ddpm  # the DDPM runs first


def test_presets_compose_on_paper_and_foreign_configs(monkeypatch):
    """gpu.yaml, slurm.yaml and wandb.yaml on a paper composition and on a standalone config with Lightning's own
    CSVLogger (slurm.yaml switches it to the requeue-stable logger, keeping its folder); the offline FID add-on of
    configs/eval on the config its comment names."""
    from jointdiff.callbacks.workflow import WandbResolvedConfig
    from jointdiff.workflow.loggers import RunCSVLogger, WandbRunLogger

    monkeypatch.setenv("WANDB_RUN_ID", "test-id")  # no id is generated, nothing is written
    base = [paper.BASE, paper.DATA.format("fashion_mnist"), paper.MODEL.format("joint")]
    cpu = ["--trainer.accelerator=cpu"]  # no GPU here: the preset's accelerator is checked as parsed
    cli = build([*base, "configs/base/gpu.yaml", "configs/base/wandb.yaml"], cpu)
    assert cli.config["fit"].trainer.precision == "32-true"
    loggers = cli.trainer.loggers
    assert isinstance(loggers[0], RunCSVLogger) and isinstance(loggers[1], WandbRunLogger)
    assert loggers[1].version == "test-id"
    assert any(isinstance(cb, WandbResolvedConfig) for cb in cli.trainer.callbacks)
    assert cli.trainer.log_dir.startswith(os.path.join("runs", "paper", "fashion_mnist", "joint"))

    cli = build(["configs/demo.yaml", "configs/base/slurm.yaml", "configs/base/wandb.yaml"],
                [*cpu, "--trainer.strategy=auto"])
    assert cli.config["fit"].trainer.strategy == "auto" and cli.trainer.loggers[0].log_dir.startswith(
        os.path.join("runs", "demo"))
    assert isinstance(cli.trainer.loggers[0], RunCSVLogger)
    cli = build(["configs/demo.yaml", "configs/eval/fid_classifier_fashion_mnist.yaml"])
    (evaluation,) = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "GenerativeEvaluation"]
    assert evaluation.extractor_specs[0].startswith("fmnist_clf=classifier:")
    with pytest.raises(MisconfigurationException, match="gpu"):  # the preset really asks for a GPU
        build([*base, "configs/base/gpu.yaml"])


def test_paper_command_checks_runs_and_names_missing_inputs(tmp_path):
    """`jointdiff paper --check` builds each selected run (the probe pulls in its DDPM) and, when a run's input
    checkpoint does not exist yet, says which run must be trained first instead of failing."""
    from jointdiff.workflow.reproduce import paper as paper_command

    lines = paper_command(only=["fashion_mnist/classifier", "fashion_mnist/probe"], quick=True, check=True,
                          root=str(tmp_path))
    assert [line.split()[:2] for line in lines] == [
        ["OK", "fashion_mnist/ddpm:"], ["OK", "fashion_mnist/classifier:"], ["SKIP", "fashion_mnist/probe:"]]
    assert "train fashion_mnist/ddpm first" in lines[2]
    printed = paper_command(tables=[6], only=["table6/usps_mnist/joint"], quick=True, root=str(tmp_path))
    assert "jointdiff adapt" in printed[1] and "configs/base/cpu_quick.yaml" in printed[1]


def test_print_config_of_a_composition_shows_the_resolved_values(capsys):
    """`jointdiff fit --print_config` on a three-file composition prints the carried-over architecture, the
    dataset's budget and the run folder parts (every value, defaults included)."""
    from jointdiff.cli import main

    with pytest.raises(SystemExit) as done:
        main(["fit", "-c", paper.BASE, "-c", paper.DATA.format("cifar10"), "-c", paper.MODEL.format("classifier"),
              "--print_config"])
    assert done.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    model = cfg["model"]["init_args"]
    assert cfg["model"]["class_path"] == "jointdiff.models.StandaloneClassifier"
    arch = (model["model_channels"], model["channel_mult"], model["attention_downsample"])
    assert arch == (128, [1, 2, 2, 2], [2, 4])
    assert model["weight_decay"] == 0.0 and model["norm_groups"] == 32  # defaults are printed too
    assert cfg["trainer"]["max_steps"] == 500000 and cfg["data"]["init_args"]["batch_size"] == 256
    assert {k: cfg["trainer"]["logger"]["init_args"][k] for k in ("save_dir", "group", "name")} == {
        "save_dir": "runs/paper", "group": "cifar10", "name": "classifier"}
