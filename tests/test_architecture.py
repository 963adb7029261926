"""The layering contract: imports only point down, and no module graph cycle.

    worldmodel  <-  variants  <-  harness  <-  reports  <-  harness/cli.py (the `bench` entry point)

Every import counts, also one inside a function (a lazy import still couples the modules) and one
under `if TYPE_CHECKING:`. A new import that points up, or closes a cycle, fails here: move the
shared thing down (data types that cross layers live in harness/types.py, exit codes in
harness/exits.py, the component registry in worldmodel/registry.py). There is no allow-list.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("worldmodel", "variants", "harness", "reports")
CLI = "harness.cli"  # the one module of harness that sits above reports: it prints and writes what the others return
# Which layers a layer may import (its own included).
ALLOWED = {
    "worldmodel": {"worldmodel"},
    "variants": {"variants", "worldmodel"},
    "harness": {"harness", "variants", "worldmodel"},
    "reports": {"reports", "harness", "variants", "worldmodel"},
    "cli": {"cli", "reports", "harness", "variants", "worldmodel"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imported(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules a module imports, anywhere in it: `from a import b` counts as a.b when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {target for target in targets if target in modules}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(path, name, modules) - {name} for name, path in modules.items()}


def layer(module: str) -> str:
    return "cli" if module == CLI else module.split(".")[0]


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((source, target) for source, targets in graph.items() for target in targets
                  if layer(target) not in ALLOWED[layer(source)])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a -> b -> ... -> a), or None: a depth-first search for a back edge."""
    state: dict[str, str] = {}  # "open" on the current path, "done" when fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_lazy_and_from_imports():
    graph = import_graph()
    assert "harness.matrix" in graph["harness.compat"]  # a function-level import only
    assert "harness.gate" in graph[CLI] and "reports.publish" in graph[CLI]
    assert "harness.types" in graph["harness.stats"]


def test_imports_only_point_down():
    assert upward_imports(import_graph()) == []


def test_only_the_cli_imports_reports():
    graph = import_graph()
    assert sorted(name for name, targets in graph.items()
                  if layer(name) != "reports" and any(layer(t) == "reports" for t in targets)) == [CLI]


def test_the_shared_modules_are_leaves():
    """The types and exit codes every layer imports depend on nothing of the project; the component
    registry (which the LAM and every variant import) on nothing but the error type."""
    graph = import_graph()
    assert graph["harness.types"] == set() and graph["harness.exits"] == set()
    assert graph["worldmodel.registry"] == {"worldmodel.errors"}


def test_commands_never_import_the_cli():
    graph = import_graph()
    assert [name for name, targets in graph.items() if CLI in targets] == []


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_the_stage_ids_hash_every_module_the_stages_run():
    """Each worldmodel module a stage imports joins the stage ids (harness/matrix.py), so editing it retrains
    instead of reusing stale runs: a new module must be listed there."""
    from harness.matrix import SHARED_SOURCES, STAGE_SOURCES, WORLDMODEL_DIR

    graph = import_graph()
    reached, todo = set(), ["worldmodel.stages"]
    while todo:
        if (name := todo.pop()) not in reached:
            reached.add(name)
            todo.extend(graph[name])
    patterns = SHARED_SOURCES + [pattern for files in STAGE_SOURCES.values() for pattern in files]
    hashed = {module_name(path) for pattern in patterns for path in WORLDMODEL_DIR.glob(pattern)}
    assert sorted({name for name in reached if layer(name) == "worldmodel"} - hashed) == []


@pytest.mark.parametrize("source,target,check", [
    ("worldmodel.tokenizer", "harness.stats", upward_imports),
    ("harness.gate", "harness.cli", upward_imports),
    ("harness.stats", "reports.text", upward_imports),
    ("harness.stats", "harness.gate", find_cycle),
])
def test_the_contract_catches_a_new_violation(source, target, check):
    graph = import_graph()
    graph[source] = graph[source] | {target}
    assert check(graph), f"adding {source} -> {target} went unnoticed"
