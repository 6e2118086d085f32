"""The import graph keeps its layers: no cycle between the package's top-level parts or between any two of its
modules, the command layer and the console script are imported by nobody, the math knows no Lightning, data and
metrics know no model, and the leaf modules (atomic files, image ranges) import nothing of the package."""

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
    """Every ``.py`` file under the folders (a file path stands for itself)."""
    return sorted(p for f in folders for p in ((REPO / f,) if f.endswith(".py") else (REPO / f).rglob("*.py")))


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{p.relative_to(REPO)} imports {m}" for p in files for m in sorted(imports(p))
            if any(m == f or m.startswith(f + ".") for f in forbidden)]


def test_nothing_outside_the_cli_imports_the_command_layer():
    files = [p for p in python_files("jointdiff", "experiments", "tests")
             if "jointdiff/commands/" not in p.as_posix() and p != REPO / "jointdiff" / "cli.py"]
    assert offenders(files, ("jointdiff.commands",)) == []


def test_the_library_and_the_experiments_never_import_the_console_script():
    """``jointdiff/cli.py`` is an adapter over :mod:`jointdiff.workflow.lightning_cli`; tests may drive it."""
    files = [p for p in python_files("jointdiff", "experiments") if p != REPO / "jointdiff" / "cli.py"]
    assert offenders(files, ("jointdiff.cli",)) == []


def part(module: str) -> str:
    """``jointdiff.<part>…`` → ``<part>`` (a sub-package or a top-level module)."""
    return module.split(".")[1]


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in python_files("jointdiff"):
        rel = path.relative_to(REPO / "jointdiff")
        source = rel.parts[0].removesuffix(".py")
        targets = {part(m) for m in imports(path) if m.startswith("jointdiff.")} - {source}
        graph.setdefault(source, set()).update(targets)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of nodes (first = last), or ``None``."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt, node]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_no_import_cycle_between_top_level_parts():
    graph = package_graph()
    assert {"data", "models", "metrics", "nn", "diffusion", "sampling", "callbacks", "workflow"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' → '.join(find_cycle(graph))}"


def module_graph(root: Path, package: str = "jointdiff") -> dict[str, set[str]]:
    """Module → the package's modules it imports (``from a.b import name`` counts as ``a.b``, or ``a.b.name`` when
    that is a module), for every ``.py`` under ``root / package``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        modules[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for m in imports(path):
            while m and m not in modules:
                m = m.rpartition(".")[0]
            if m and m != name:
                targets.add(m)
        graph[name] = targets
    return graph


def test_no_import_cycle_between_any_two_modules():
    graph = module_graph(REPO)
    assert "jointdiff.sampling.generate" in graph and "jointdiff.sampling.distributed" in graph
    assert find_cycle(graph) is None, f"import cycle: {' → '.join(find_cycle(graph))}"


def test_the_module_graph_shows_a_cycle_built_on_purpose(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from pkg.sub.b import helper\n")
    (pkg / "sub" / "b.py").write_text("def helper():\n    from pkg.sub import a  # a function-level import counts\n")
    cycle = find_cycle(module_graph(tmp_path, "pkg"))
    assert cycle is not None and set(cycle) == {"pkg.sub.a", "pkg.sub.b"}


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.parametrize("layer,forbidden", [
    ("jointdiff/nn", ("lightning", "jointdiff.models", "jointdiff.data", "jointdiff.callbacks", "jointdiff.sampling")),
    ("jointdiff/diffusion", ("lightning", "jointdiff.models", "jointdiff.data", "jointdiff.callbacks",
                             "jointdiff.sampling")),
    ("jointdiff/data", ("jointdiff.models", "jointdiff.nn", "jointdiff.diffusion", "jointdiff.sampling",
                        "jointdiff.callbacks", "jointdiff.metrics", "jointdiff.workflow")),
    ("jointdiff/metrics", ("jointdiff.data", "jointdiff.diffusion", "jointdiff.sampling", "jointdiff.callbacks",
                           "jointdiff.models", "jointdiff.nn", "jointdiff.workflow")),
    ("jointdiff/files.py", ("jointdiff",)),
    ("jointdiff/images.py", ("jointdiff",)),
])
def test_layers(layer, forbidden):
    assert offenders(python_files(layer), forbidden) == []
