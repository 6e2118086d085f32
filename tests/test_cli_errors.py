"""Errors a person can read: one line, before any data is read, non-zero exit; a
checkpoint that does not fit the configured model is refused naming both values; a linked key set by hand is
refused; `test --ckpt_path X` records X and its step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DEMO_CONFIG, tiny_overrides

from jointdiff.cli import console, main
from jointdiff.data import FashionMNISTDataModule


@pytest.fixture
def no_data_reads(monkeypatch):
    """Any attempt to read the dataset fails the test (the error must come before)."""

    def forbidden(self):
        raise AssertionError("the dataset was read before the error was reported")

    monkeypatch.setattr(FashionMNISTDataModule, "load_splits", forbidden)


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        console(argv)  # the `jointdiff` console script
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("jointdiff: error: "), err
    return err[0]


BAD_VALUES = [
    ("--model.init_args.classifier_weight=-1", "classifier_weight must be >= 0"),
    ("--model.init_args.diffusion_steps=0", "diffusion_steps"),
    ("--data.init_args.batch_size=0", "batch_size must be >= 1"),
    ("--data.init_args.labelled_fraction=1.5", r"labelled_fraction must be in \(0, 1\]"),
    ("--model.init_args.ema_decay=1.5", r"ema decay must be in \[0, 1\)"),
    ("--model.init_args.lr=-0.001", "lr must be > 0"),
    ("--model.init_args.weight_decay=-1", "weight_decay must be >= 0"),
    ("--model.init_args.num_classes=5", r"num_classes=5 is set by hand.*data.num_classes=10"),
]


@pytest.mark.parametrize(("arg", "message"), BAD_VALUES, ids=[a.split("=")[0].split(".")[-1] for a, _ in BAD_VALUES])
def test_bad_value_is_one_line_before_any_data_is_read(arg, message, tmp_path, capsys, no_data_reads):
    line = _one_line_error(capsys, ["fit", "-c", DEMO_CONFIG, arg, f"--trainer.default_root_dir={tmp_path}",
                                    f"--trainer.logger.init_args.save_dir={tmp_path}"])
    import re

    assert re.search(message, line), line
    assert not list(tmp_path.rglob("config.yaml"))  # no run folder left behind


def test_debug_variable_shows_the_traceback_instead(monkeypatch):
    monkeypatch.setenv("JOINTDIFF_DEBUG", "1")
    with pytest.raises(ValueError, match="Does not validate"):  # jsonargparse's wrapper, with the original inside
        console(["fit", "-c", DEMO_CONFIG, "--model.init_args.lr=-1"])


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, data_root) -> Path:
    """A 3-step checkpoint of the tiny CPU model on 28-px Fashion-MNIST."""
    folder = tmp_path_factory.mktemp("trained")
    main(["fit", "-c", DEMO_CONFIG, "-c", str(tiny_overrides(folder)), "--test_after_fit=false"])
    return next(folder.rglob("last.ckpt"))


def test_empty_checkpoint_is_one_line(tmp_path, capsys, no_data_reads):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    line = _one_line_error(capsys, ["test", "-c", DEMO_CONFIG, "-c", str(tiny_overrides(tmp_path)),
                                    f"--ckpt_path={empty}"])
    assert str(empty) in line and "0 bytes" in line


def test_truncated_checkpoint_is_one_line(tmp_path, capsys, no_data_reads, trained_checkpoint):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(trained_checkpoint.read_bytes()[:5000])
    line = _one_line_error(capsys, ["test", "-c", DEMO_CONFIG, "-c", str(tiny_overrides(tmp_path)),
                                    f"--ckpt_path={cut}"])
    assert str(cut) in line and "truncated" in line


@pytest.mark.parametrize("sub", ["test", "validate", "fit"])
def test_checkpoint_of_another_image_size_is_refused_naming_both(sub, tmp_path, capsys, no_data_reads,
                                                                  trained_checkpoint):
    line = _one_line_error(capsys, [sub, "-c", DEMO_CONFIG, "-c", str(tiny_overrides(tmp_path)),
                                    "--data.init_args.image_size=32", f"--ckpt_path={trained_checkpoint}"])
    assert "image_size: checkpoint 28, this run 32" in line


def test_with_ckpt_path_the_model_is_built_as_the_checkpoint_was_trained_and_the_cli_says_so(tmp_path,
                                                                                              trained_checkpoint):
    # LightningCLI takes the model's class and arguments from --ckpt_path's hyper-parameters; a setting that differs
    # from the config is not silently replaced: the CLI warns, naming both values
    with pytest.warns(UserWarning, match=r"built as the checkpoint was trained.*model_channels 32 → 16"):
        main(["test", "-c", DEMO_CONFIG, "-c", str(tiny_overrides(tmp_path)), "--model.init_args.model_channels=32",
              f"--ckpt_path={trained_checkpoint}"])


def test_checkpoint_of_another_model_class_is_refused(tmp_path, capsys, no_data_reads, trained_checkpoint):
    line = _one_line_error(capsys, ["test", "-c", "experiments/evidence/configs/fmnist_classifier.yaml",
                                    f"--ckpt_path={trained_checkpoint}", f"--trainer.default_root_dir={tmp_path}"])
    assert "holds a JointDiffusion but this run builds a StandaloneClassifier" in line


def test_checkpoint_fit_check_names_architecture_and_class(trained_checkpoint):
    # what init_from and programmatic loading rely on (no LightningCLI to rebuild the model from the checkpoint)
    from jointdiff.models import JointDiffusion, StandaloneClassifier
    from jointdiff.models.checkpoints import check_checkpoint_fits, read_checkpoint

    ckpt = read_checkpoint(trained_checkpoint)
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    check_checkpoint_fits(JointDiffusion(**{**hp, "lr": 1e-3, "dropout": 0.0}), ckpt, "x.ckpt")  # fits
    with pytest.raises(ValueError, match="model_channels: checkpoint 16, this run 32"):
        check_checkpoint_fits(JointDiffusion(**{**hp, "model_channels": 32}), ckpt, "x.ckpt")
    with pytest.raises(ValueError, match="num_classes: checkpoint 10, this run 5"):
        check_checkpoint_fits(JointDiffusion(**{**hp, "num_classes": 5}), ckpt, "x.ckpt")
    with pytest.raises(ValueError, match="holds a JointDiffusion but this run builds a StandaloneClassifier"):
        check_checkpoint_fits(StandaloneClassifier(), ckpt, "x.ckpt")


def test_test_with_ckpt_path_records_that_checkpoint_and_its_step(tmp_path, trained_checkpoint):
    main(["test", "-c", DEMO_CONFIG, "-c", str(tiny_overrides(tmp_path)), f"--ckpt_path={trained_checkpoint}"])
    metrics = json.loads(next(tmp_path.rglob("metrics.json")).read_text())
    assert metrics["test"]["global_step"] == torch.load(trained_checkpoint, weights_only=True)["global_step"] == 3
    assert metrics["checkpoint"] == metrics["test"]["checkpoint"] == str(trained_checkpoint)


def test_limit_batches_of_one_warns_that_it_means_all(tmp_path, no_data_reads):
    with pytest.warns(UserWarning, match="limit_val_batches=1 is read as 1.0, i.e. ALL batches"):
        with pytest.raises(SystemExit):
            console(["fit", "-c", DEMO_CONFIG, "--trainer.limit_val_batches=1", "--model.init_args.lr=-1"])
