"""The import graph keeps its layers: the command layer is imported by nobody but the CLI, the math knows no
Lightning, and data and metrics know no model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def python_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (REPO / f).rglob("*.py"))


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{p.relative_to(REPO)} imports {m}" for p in files for m in sorted(imports(p))
            if any(m == f or m.startswith(f + ".") for f in forbidden)]


def test_nothing_outside_the_cli_imports_the_command_layer():
    files = [p for p in python_files("jointdiff", "experiments", "tests")
             if "jointdiff/commands/" not in p.as_posix() and p != REPO / "jointdiff" / "cli.py"]
    assert offenders(files, ("jointdiff.commands",)) == []


@pytest.mark.parametrize("layer,forbidden", [
    ("jointdiff/nn", ("lightning", "jointdiff.models", "jointdiff.data", "jointdiff.callbacks", "jointdiff.sampling")),
    ("jointdiff/diffusion", ("lightning", "jointdiff.models", "jointdiff.data", "jointdiff.callbacks",
                             "jointdiff.sampling")),
    ("jointdiff/data", ("jointdiff.models", "jointdiff.nn", "jointdiff.diffusion", "jointdiff.sampling")),
    ("jointdiff/metrics", ("jointdiff.data", "jointdiff.diffusion", "jointdiff.sampling", "jointdiff.callbacks")),
])
def test_layers(layer, forbidden):
    assert offenders(python_files(layer), forbidden) == []
