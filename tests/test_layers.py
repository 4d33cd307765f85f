"""Imports flow one way: every module of rfdetr/ sits on a floor and imports only from its floor or below.

Floors, bottom to top: ground (config, classes, util) < models and data < checkpoint files <
the training run < the user API < front ends (command lines, demo). The walk reads every import
statement with ``ast``, function-level ones included (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rfdetr"
ROOT_SCRIPTS = {path.stem for path in PACKAGE.parent.glob("*.py")}

# Module-name prefixes -> floor (the longest matching prefix wins).
FLOORS = {
    "rfdetr": 0, "rfdetr.config": 0, "rfdetr.classes": 0, "rfdetr.util": 0,
    "rfdetr.models": 1, "rfdetr.datasets": 1, "rfdetr.tracking": 1,
    "rfdetr.checkpoints": 2, "rfdetr.accel": 2,
    "rfdetr.training": 3, "rfdetr.evaluation": 3, "rfdetr.validation": 3,
    "rfdetr.api": 4, "rfdetr.detr": 4, "rfdetr.export": 4, "rfdetr.inference": 4, "rfdetr.video": 4,
    "rfdetr.cli": 5, "rfdetr.demo": 5,
}
FLOOR_NAMES = ("ground", "models/data", "checkpoint", "training", "API", "front end")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(name: str) -> int:
    matches = [prefix for prefix in FLOORS if name == prefix or name.startswith(prefix + ".")]
    assert matches, f"{name} has no floor: add it to FLOORS in {Path(__file__).name}"
    return FLOORS[max(matches, key=len)]


def imports_of(path: Path, source: str | None = None) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file (or in ``source``, read as that file); the
    package root's lazy facade is skipped."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    facade = {id(node) for function in ast.walk(tree) if isinstance(function, ast.FunctionDef)
              and function.name == "__getattr__" and path == PACKAGE / "__init__.py" for node in ast.walk(function)}
    found = []
    for node in ast.walk(tree):
        if id(node) in facade:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from rfdetr.cli import shrink" imports the submodule rfdetr.cli.shrink
            found += [(f"{node.module}.{alias.name}" if _is_module(f"{node.module}.{alias.name}") else node.module,
                       node.lineno) for alias in node.names]
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def dependency_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[module_name(path)] = {name for name, _ in imports_of(path) if name.split(".")[0] == "rfdetr"}
    return graph


def test_every_import_goes_down_or_sideways():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for imported, line in imports_of(path):
            if imported.split(".")[0] != "rfdetr":
                continue
            if floor_of(imported) > floor_of(name):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({FLOOR_NAMES[floor_of(name)]}) imports "
                              f"{imported} ({FLOOR_NAMES[floor_of(imported)]})")
    assert upward == []


def test_the_package_never_imports_a_root_script():
    found = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}" for path in sorted(PACKAGE.rglob("*.py"))
             for name, line in imports_of(path) if name.split(".")[0] in ROOT_SCRIPTS]
    assert found == []


def test_no_import_cycles():
    graph = dependency_graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # A package __init__ that re-exports its own submodules is not a cycle of concepts.
    cycles = [c for c in cycles if not _package_reexport(c)]
    assert cycles == []


def _package_reexport(cycle: str) -> bool:
    modules = cycle.split(" -> ")
    return all(m.startswith(modules[0]) or modules[0].startswith(m) for m in modules)


HOOKS = ("register_forward_hook", "register_forward_pre_hook")


def hooks_registered(path: Path, source: str | None = None) -> list[tuple[str, int]]:
    """(hook-registering method, line) for every call of one in the file (or in ``source``)."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    return [(node.func.attr, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in HOOKS]


def test_the_model_code_is_plain_pytorch():
    """rfdetr/models never imports the CPU speed paths (they are applied from outside, rfdetr.accel) and
    registers no forward hook (a model's outputs are values, not state captured on the side)."""
    found = []
    for path in sorted((PACKAGE / "models").rglob("*.py")):
        where = path.relative_to(PACKAGE.parent)
        found += [f"{where}:{line} imports {name}" for name, line in imports_of(path)
                  if name == "rfdetr.accel" or name.startswith("rfdetr.accel.")]
        found += [f"{where}:{line} calls {hook}" for hook, line in hooks_registered(path)]
    assert found == []


def test_the_model_code_walk_sees_an_accel_import_and_a_hook():
    path = PACKAGE / "models" / "transformer.py"
    source = path.read_text() + ("\n\ndef late(module):\n    from rfdetr.accel.linear import CpuLinear\n"
                                 "    module.register_forward_pre_hook(print)\n")
    assert "rfdetr.accel.linear" in [name for name, _ in imports_of(path, source)]
    assert [hook for hook, _ in hooks_registered(path, source)] == ["register_forward_pre_hook"]


def test_the_walk_sees_a_violation():
    # Not vacuous: a model module that imported the trainer, even inside a function, would be reported.
    path = PACKAGE / "models" / "lwdetr.py"
    source = path.read_text() + "\n\ndef late():\n    from rfdetr.training.trainer import Trainer\n"
    imported = [name for name, _ in imports_of(path, source)]
    assert "rfdetr.training.trainer" in imported
    assert floor_of("rfdetr.training.trainer") > floor_of(module_name(path))
