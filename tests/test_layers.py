"""The package reads top-down: its import graph has no cycle and the layers point one way.

Imports are read from the source with `ast`, imports inside functions included, so an import
moved into a function to dodge a cycle still counts.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under `package_dir`."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imported_names(path: Path, module: str) -> set[str]:
    """Every module named by an import statement anywhere in the file (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports.

    Importing `a.b.c` also runs the `__init__` of `a.b` unless the importer is itself inside `a.b`
    (then that package is already being imported), so those package edges count too.
    """
    modules = module_files(package_dir)
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(path, module):
            if name not in modules:
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                target = ".".join(parts[:depth])
                if target in modules and target != module and not module.startswith(target + "."):
                    targets.add(target)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [m0, m1, ..., m0], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    """`start` and every package module it imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT / "pipeline")


def test_the_package_has_no_import_cycle(graph):
    assert len(graph) > 20 and "pipeline.models.dvib" in graph["pipeline.models"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_models_never_import_the_layers_above(graph):
    above = ("pipeline.stages", "pipeline.trainer", "pipeline.evaluation", "pipeline.report", "pipeline.robustness")
    for module in (m for m in graph if m.startswith("pipeline.models")):
        reached = closure(graph, module)
        wrong = sorted(m for m in reached if m.startswith(above))
        assert not wrong, f"{module} imports {wrong}"


@pytest.mark.parametrize("module", ["pipeline.config", "pipeline.model_names"])
def test_config_and_model_names_never_import_torch(graph, module):
    for reached in sorted(closure(graph, module)):
        names = imported_names(module_files(ROOT / "pipeline")[reached], reached)
        assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{module} reaches torch via {reached}"
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0, f"importing {module} loads torch"


def test_cycle_finder_sees_an_import_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("import os\n\ndef f():\n    from pkg.sub import high  # dodges the cycle at import time\n")
    (package / "sub" / "__init__.py").write_text("from . import high\n")
    (package / "sub" / "high.py").write_text("from pkg.low import f\n")
    graph = import_graph(package)
    assert graph["pkg.low"] == {"pkg.sub", "pkg.sub.high"}
    assert graph["pkg.sub"] == {"pkg.sub.high"}
    assert find_cycle(graph) == ["pkg.low", "pkg.sub", "pkg.sub.high", "pkg.low"]
    (package / "low.py").write_text("import os\n")
    assert find_cycle(import_graph(package)) is None


def test_importing_a_submodule_counts_its_package_init(tmp_path):
    """Outside a package, `import pkg.sub.leaf` runs pkg/sub/__init__.py; inside it, it does not."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.outside import x\nfrom pkg.sub.leaf import y\n")
    (package / "sub" / "leaf.py").write_text("from pkg.sub.other import z\n")
    (package / "sub" / "other.py").write_text("")
    (package / "outside.py").write_text("import pkg.sub.leaf\n")
    graph = import_graph(package)
    assert graph["pkg.sub.leaf"] == {"pkg.sub.other"}
    assert graph["pkg.outside"] == {"pkg.sub", "pkg.sub.leaf"}
    assert find_cycle(graph) == ["pkg.outside", "pkg.sub", "pkg.outside"]
