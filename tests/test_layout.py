"""The house a newcomer walks stays in order: short files and functions, rooms with names of their own, no stage
reaching into another stage's core, no import circles."""

import ast
import collections
from pathlib import Path

import pytest

from components.stages import STAGES, SWEEP

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "pipelines", "monitoring")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 350, 60
PER_STAGE_NAMES = {"__init__.py", "core.py", "adapter.py", "component.py"}  # each stage's layers share these


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict) -> set[str]:
    """The project's modules that a module imports, at its top or inside functions, but not for type checking."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def stage_number(module: str) -> int | None:
    """The stage a module belongs to: its package's (the sweep is stage 4), or 7 for monitoring/."""
    if module.startswith("monitoring"):
        return 7
    parts = module.split(".")
    by_package = {stage.name: stage.number for stage in (*STAGES, SWEEP)}
    return by_package.get(parts[1]) if parts[0] == "components" and len(parts) > 2 else None


def test_no_file_is_over_350_lines_and_no_function_over_60():
    long_files, long_functions = [], []
    for module, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{module}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{module}.{node.name}: {length} lines")
    assert not long_files and not long_functions, long_files + long_functions


def test_no_two_modules_share_a_file_name():
    by_name = collections.defaultdict(list)
    for module, path in modules().items():
        if path.name not in PER_STAGE_NAMES:
            by_name[path.name].append(module)
    assert not {name: found for name, found in by_name.items() if len(found) > 1}


def test_no_stage_imports_another_stages_core():
    cores = {stage.core_module: stage.number for stage in STAGES}
    known = modules()
    reaching = [
        f"{module} imports {target}"
        for module, path in known.items()
        for target in imports(path, known)
        if target in cores and stage_number(module) is not None and cores[target] != stage_number(module)
    ]
    assert not reaching


def test_no_import_circles():
    known = modules()
    graph = {module: imports(path, known) - {module} for module, path in known.items()}
    circles = []

    def visit(module: str, trail: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in trail:
                circles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in done:
                visit(target, [*trail, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not circles


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_each_stage_folder_holds_its_adapter_and_component_only_where_its_core_is_elsewhere(stage):
    folder = ROOT / "components" / stage.name
    assert (folder / "adapter.py").is_file() and (folder / "component.py").is_file()
    assert (folder / "core.py").is_file() == (stage.core_module == f"components.{stage.name}.core")
