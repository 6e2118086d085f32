"""Every stand-alone config of the comparison models parses against the model signatures (unknown keys are rejected).

The paper-size comparison models are method fragments under configs/paper/models/, tested in their compositions
(test_configs_paper*.py); the stand-alone ones are PDAE's and the CPU-sized evidence configs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jointdiff.cli import run_lightning_cli

REPO = Path(__file__).resolve().parent.parent
EVIDENCE = REPO / "experiments" / "evidence" / "configs"
NAMES = ["classifier", "probe", "ddpm", "pdae"]
FILES = [REPO / "configs" / "pdae_fashion_mnist.yaml", *(EVIDENCE / f"fmnist_{n}.yaml" for n in NAMES)]


def test_all_comparison_configs_are_present():
    assert [p for p in FILES if not p.is_file()] == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_config_parses_and_prints(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "-c", str(path), "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(path.read_text())
    assert printed["model"]["class_path"] == written["model"]["class_path"]
    for key, value in written["model"]["init_args"].items():  # every setting survives parsing unchanged
        got = printed["model"]["init_args"][key]
        assert got == value or (isinstance(value, list) and list(map(float, got)) == list(map(float, value))), key


def test_unknown_model_key_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "-c", str(EVIDENCE / "fmnist_classifier.yaml"), "--model.init_args.lamda", "1",
                           "--print_config"])
    assert exit_info.value.code not in (None, 0)
