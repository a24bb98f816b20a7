"""The DVC graph is exact: each stage's code deps are the project files its command imports.

The import closure is derived from the code (imports inside functions count, and importing
`a.b.c` runs `a/__init__.py` and `a/b/__init__.py` too), so `dvc.yaml` can never drift from it.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"


def module_file(module: str) -> Path | None:
    """The project file of a dotted module name (a package's __init__.py), or None if not ours."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """Dotted names of every project module `path` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                origin = f"{parent}.{node.module}" if node.module else parent
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] == PACKAGE and module_file(m) is not None}


def with_parents(module: str) -> list[str]:
    """`a.b.c` -> ['a', 'a.b', 'a.b.c']: importing a module runs every parent package first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(module: str) -> set[str]:
    """Project files (relative paths) executed by `python -m <module>`."""
    seen: set[str] = set()
    todo = with_parents(module)
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if module_file(current) is None:  # a namespace package runs no file
            continue
        for imported in imported_modules(module_file(current), current):
            todo.extend(with_parents(imported))
    return {module_file(m).relative_to(ROOT).as_posix() for m in seen if module_file(m) is not None}


def stage_definitions() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    match = re.search(r"python -m ([\w.]+)", stage["cmd"])
    assert match, f"stage command does not run a pipeline module: {stage['cmd']!r}"
    return match.group(1)


def code_deps(stage: dict) -> set[str]:
    """The project source files a stage lists: .py files, and every .py file under a listed folder."""
    files: set[str] = set()
    for dep in stage.get("deps", []):
        if not dep.startswith(f"{PACKAGE}/"):
            continue
        path = ROOT / dep
        if path.is_dir():
            files.update(p.relative_to(ROOT).as_posix() for p in path.rglob("*.py"))
        else:
            files.add(dep)
    return files


@pytest.mark.parametrize("name", sorted(stage_definitions()))
def test_stage_code_deps_are_exactly_its_import_closure(name):
    stage = stage_definitions()[name]
    expected = import_closure(stage_module(stage))
    listed = code_deps(stage)
    assert not listed - expected, f"dvc.yaml stage {name!r} lists files its code does not import: {sorted(listed - expected)}"
    assert not expected - listed, f"dvc.yaml stage {name!r} misses files its code imports: {sorted(expected - listed)}"


def test_closure_follows_function_level_imports_and_parent_packages(tmp_path):
    closure = import_closure("pipeline.stages.validate")
    assert {"pipeline/stages/__init__.py", "pipeline/stages/common.py", "pipeline/config.py"} <= closure
    assert "pipeline/models/__init__.py" in closure  # a package's __init__ runs on any submodule import


def test_training_stages_import_no_report_or_robustness_code():
    for name in ("train", "table"):
        module = stage_module(stage_definitions()[name])
        closure = import_closure(module)
        assert not {f for f in closure if re.search(r"pipeline/(report|robustness)", f)}, (name, sorted(closure))
