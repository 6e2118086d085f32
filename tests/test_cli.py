"""The `jointdiff` command line, configs, missing-data errors, and checkpoint resume."""

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import DEMO_CONFIG, TINY_MODEL, tiny_overrides

from jointdiff.cli import main
from jointdiff.data import DatasetNotFoundError, FashionMNISTDataModule
from jointdiff.models import JointDiffusion
from jointdiff.models.checkpoints import load_model


def test_fit_then_test_from_config_writes_checkpoint_metrics_and_grid(data_root, tmp_path, capsys):
    main(["fit", "-c", DEMO_CONFIG, "-c", str(tiny_overrides(tmp_path))])
    out = capsys.readouterr().out
    assert "jointdiff test summary" in out
    metrics_file = next(tmp_path.rglob("metrics.json"))
    metrics = json.loads(metrics_file.read_text())
    assert metrics["fit"]["global_step"] == 3
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0 and "test/acc_raw" in metrics["test"]
    assert Path(metrics["checkpoint"]).is_file() and Path(metrics["sample_grid"]).is_file()
    model = load_model(metrics["checkpoint"], expected=JointDiffusion)
    assert model.hparams.num_classes == 10 and model.hparams.image_size == 28  # linked from the DataModule


def test_main_job_writes_a_class_conditional_grid_drawn_with_the_joint_sampler(data_root, tmp_path, capsys):
    from jointdiff.diffusion.ddim import RESPACED_ETA

    overrides = tiny_overrides(tmp_path, noisy_classifier="replace")
    cfg = yaml.safe_load(overrides.read_text())
    cfg["trainer"]["callbacks"].insert(2, {"class_path": "jointdiff.callbacks.ClassConditionalGrid",
                                           "init_args": {"per_class": 2, "alpha": 50.0, "seed": 5,
                                                         "clip_denoised": True}})
    overrides.write_text(yaml.safe_dump(cfg))
    main(["fit", "-c", DEMO_CONFIG, "-c", str(overrides)])
    out = capsys.readouterr().out
    metrics = json.loads(next(tmp_path.rglob("metrics.json")).read_text())
    grid = Path(metrics["conditional_grid"])
    assert grid.name == "conditional_step_0000003.png" and grid != Path(metrics["sample_grid"])
    # the main job's grid: the validated respaced sampler (configs/demo.yaml: 25 steps at RESPACED_ETA)
    assert f"class grid     {grid}  (joint sampler (α = 50), η-DDIM on 25 of 50 steps, η = {RESPACED_ETA:g}; x̂0 " \
        "clamped to [-1, 1])" in out
    split = metrics["test"]["seconds"]  # the wall time split into its parts, each measured on its own
    assert split["grids"] > 0 and split["validation"] > 0 and split["test"] > 0 and split["training"] > 0
    assert split["training"] + split["validation"] + split["grids"] + split["test"] <= split["total"] + 0.5
    assert split["training_steps_per_s"] == pytest.approx(3 / split["training"], rel=0.01)
    assert f"training {split['training']:.0f} s ({split['training_steps_per_s']:.2f} steps/s)" in out
    assert f"sample grid    {metrics['sample_grid']}" in out and metrics["conditional_grid_clip_denoised"] is True
    assert "wall time (s)" in out and "checkpoints/last.ckpt" in out
    assert metrics["test"]["wall_time_s"] >= metrics["fit"]["wall_time_s"] > 0
    # independent redraw: row k holds class k, 2 samples each, from the EMA weights, seeded generator, η-DDIM on the
    # 25 respaced steps of 50
    from PIL import Image

    from jointdiff.diffusion.conditional import joint_conditional_sample
    from jointdiff.diffusion.ddim import respaced_timesteps
    from jointdiff.images import save_grid

    model = load_model(metrics["checkpoint"], expected=JointDiffusion)
    net = model.ema.module.eval()
    targets = torch.tensor([k for k in range(10) for _ in range(2)])
    x = joint_conditional_sample(net, model.diffusion, (20, 1, 28, 28), targets, 50.0,
                                 generator=torch.Generator().manual_seed(5), clip_denoised=True,
                                 timesteps=respaced_timesteps(50, 25), eta=RESPACED_ETA)
    expected = save_grid(x, tmp_path / "expected.png", nrow=2)
    got, want = Image.open(grid), Image.open(expected)
    assert got.size == want.size == (2 * 30 + 2, 10 * 30 + 2)
    assert got.tobytes() == want.tobytes()


def test_class_conditional_grid_rejects_a_model_without_head(data_root, tmp_path):
    overrides = tiny_overrides(tmp_path, classifier_weight=0.0)
    cfg = yaml.safe_load(overrides.read_text())
    cfg["trainer"]["callbacks"].append({"class_path": "jointdiff.callbacks.ClassConditionalGrid"})
    overrides.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="ClassConditionalGrid needs a multi-class model with a classifier head"):
        main(["fit", "-c", DEMO_CONFIG, "-c", str(overrides)])


def test_print_config_shows_resolved_values(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", "configs/base/default.yaml", "-c", "configs/paper/data/fashion_mnist.yaml",
              "-c", "configs/paper/models/joint.yaml", "--print_config"])
    assert exit_.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    args = cfg["model"]["init_args"]
    assert args["model_channels"] == 64 and args["diffusion_steps"] == 500 and args["classifier_weight"] == 0.001
    assert cfg["data"]["class_path"] == "jointdiff.data.FashionMNISTDataModule"
    assert cfg["data"]["init_args"]["batch_size"] == 128 and cfg["trainer"]["max_steps"] == 100000


def test_unknown_config_key_is_rejected_before_training(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", DEMO_CONFIG, "--model.init_args.classifer_weight", "0.1"])
    assert exit_.value.code != 0
    assert "classifer_weight" in capsys.readouterr().err


def test_ambiguous_linear_schedule_name_is_rejected_before_training(capsys):
    # "linear" meant Ho et al.'s schedule before 2026-12-02; a config must now say which linear schedule it means
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", DEMO_CONFIG, "--model.init_args.beta_schedule", "linear"])
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert "beta_schedule" in err and "reference_linear" in err


def test_missing_data_error_names_files_and_three_ways(tmp_path, monkeypatch):
    monkeypatch.delenv("JOINTDIFF_DATA_ROOT", raising=False)
    dm = FashionMNISTDataModule(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup("fit")
    msg = str(err.value)
    for needle in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "--data.root", "JOINTDIFF_DATA_ROOT",
                   "download", str(tmp_path / "nowhere")):
        assert needle in msg


def test_env_root_is_used_when_no_root_given(data_root, monkeypatch):
    monkeypatch.setenv("JOINTDIFF_DATA_ROOT", str(data_root))
    dm = FashionMNISTDataModule(download=False, val_fraction=0.1)
    dm.setup("fit")
    assert len(dm.train_set) == 54000 and len(dm.val_set) == 6000 and len(dm.test_set) == 10000


def _trainer(tmp_path, max_steps, **kw):
    return L.Trainer(max_steps=max_steps, limit_val_batches=0, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, **kw)


def test_resume_restores_step_optimizer_ema_and_rng_exactly(fmnist, tmp_path):
    """Interrupt after step 3 (the end of a 3-batch epoch) and resume: the resumed run starts from the saved step,
    optimizer and EMA state, and its first step is bit-identical to the uninterrupted run's step 4 (same RNG draws,
    same batch). tests/test_resume.py compares whole runs resumed in the middle of an epoch."""
    from jointdiff.data.base import ImageTensorDataset

    dm = FashionMNISTDataModule(root=fmnist.root, batch_size=16)
    dm.train_set = ImageTensorDataset(fmnist.train_set.images[:48], fmnist.train_set.targets[:48])
    dm.val_set, dm.test_set = fmnist.val_set, fmnist.test_set

    def model():
        L.seed_everything(0)
        return JointDiffusion(**TINY_MODEL, ema_decay=0.9)

    straight = model()
    _trainer(tmp_path / "a", 4, enable_checkpointing=False).fit(straight, datamodule=dm)

    first = model()
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "b", save_last=True)
    _trainer(tmp_path / "b", 3, callbacks=[ckpt_cb]).fit(first, datamodule=dm)
    ckpt = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.step = trainer.global_step
            self.ema = {k: v.clone() for k, v in pl_module.ema.state_dict().items()}
            self.exp_avg = [s["exp_avg"].clone() for s in trainer.optimizers[0].state.values()]

    probe = Probe()
    resumed = model()
    L.seed_everything(123)  # a different seed: everything must come from the checkpoint
    _trainer(tmp_path / "c", 4, callbacks=[probe], enable_checkpointing=False).fit(
        resumed, datamodule=dm, ckpt_path=tmp_path / "b" / "last.ckpt"
    )
    assert probe.step == 3
    for k, v in probe.ema.items():
        assert torch.equal(v, ckpt["state_dict"][f"ema.{k}"])
    saved_exp_avg = [s["exp_avg"] for s in ckpt["optimizer_states"][0]["state"].values()]
    assert len(saved_exp_avg) > 0 and all(torch.equal(a, b) for a, b in zip(probe.exp_avg, saved_exp_avg, strict=True))
    assert resumed.trainer.global_step == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoint_of_wrong_kind_is_rejected(tmp_path):
    bogus = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(ValueError, match="not written by jointdiff"):
        load_model(bogus)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.ckpt")


def test_architecture_mismatch_is_a_clear_error(tmp_path):
    from jointdiff.models.checkpoints import load_state_dict_checked

    small = JointDiffusion(**TINY_MODEL)
    wide = JointDiffusion(**{**TINY_MODEL, "model_channels": 32})
    with pytest.raises(ValueError, match="does not fit this architecture"):
        load_state_dict_checked(small, wide.state_dict(), "wide.ckpt")


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("jointdiff") or os.path.join(os.path.dirname(os.sys.executable), "jointdiff")
    assert os.path.exists(exe)
