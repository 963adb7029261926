"""The layering contract (issue 11): imports only point down, and no module graph cycle.

    worldmodel  <-  variants  <-  harness  <-  reports  <-  harness/cli.py (the `bench` entry point)

Every import counts, also one inside a function (a lazy import still couples the modules) and one
under `if TYPE_CHECKING:`. A new import that points up, or closes a cycle, fails here: move the
shared thing down (data types that cross layers live in harness/types.py, exit codes in
harness/exits.py) instead of adding it to an allow-list.
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
# Known exceptions, left by issue 11 because the source of worldmodel/ and variants/ joins the stage ids
# (harness/matrix.py), so editing it retrains every recorded run. Do not add to these: fix the import.
UPWARD_EXCEPTIONS = {
    ("worldmodel.lam", "variants.registry"),  # issue 11: the LAM looks its encoder up in the component registry
}
CYCLE_EXCEPTIONS = {
    # issue 11: the registry imports the built-in components lazily, and they import the registry to register
    ("variants.registry", "variants.lam_encoders"),
    ("variants.registry", "variants.planted_faults"),
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
                  if layer(target) not in ALLOWED[layer(source)] and (source, target) not in UPWARD_EXCEPTIONS)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a -> b -> ... -> a), or None: a depth-first search for a back edge."""
    state: dict[str, str] = {}  # "open" on the current path, "done" when fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if (node, target) in CYCLE_EXCEPTIONS:
                continue
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
    assert "variants.lam_encoders" in graph["variants.registry"]  # a function-level import
    assert "harness.gate" in graph[CLI] and "reports.render" in graph[CLI]
    assert "harness.types" in graph["harness.stats"]


def test_imports_only_point_down():
    assert upward_imports(import_graph()) == []


def test_only_the_cli_imports_reports():
    graph = import_graph()
    assert sorted(name for name, targets in graph.items()
                  if layer(name) != "reports" and any(layer(t) == "reports" for t in targets)) == [CLI]


def test_the_shared_modules_are_leaves():
    """The types and exit codes every layer imports depend on nothing of the project."""
    graph = import_graph()
    assert graph["harness.types"] == set() and graph["harness.exits"] == set()


def test_commands_never_import_the_cli():
    graph = import_graph()
    assert [name for name, targets in graph.items() if CLI in targets] == []


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_the_allow_lists_are_still_needed():
    """An exception that no longer occurs is removed, so it cannot hide a future violation."""
    graph = import_graph()
    for source, target in UPWARD_EXCEPTIONS | CYCLE_EXCEPTIONS:
        assert target in graph[source], f"{source} -> {target} is gone: drop it from the allow-list"


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
