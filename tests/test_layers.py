"""The package's import graph: no cycles between mergelab's modules, and every import goes down the layers
of docs/ARCHITECTURE.md (methods < engine < zoo < eval < stats < whole-model methods < api < experiment <
studies). Imports are read with `ast`, including those inside functions and under TYPE_CHECKING: a lazy
import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mergelab"

LAYERS = [
    "mergelab.methods",
    "mergelab.engine",
    "mergelab.zoo",
    "mergelab.eval",
    "mergelab.stats",
    "mergelab.pleas",
    "mergelab.api",
    "mergelab.experiment",
    "mergelab.studies",
    "mergelab.cli",
]


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The mergelab modules that `name` imports: `from a.b import c` names a.b.c when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & set(modules)
            found.update(submodules or {source})
    return {module for module in found if module in modules and module not in {name, "mergelab"}}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    if module == "mergelab":
        return len(LAYERS)  # the package root: `mergelab.merge` forwards to the api, lazily
    for index, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return index
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS and docs/ARCHITECTURE.md")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_cycle_finder_sees_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_and_submodule_imports_are_resolved(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from . import sibling\nfrom .pkg import thing\nimport mergelab.x\n")
    modules = {"mergelab.p.sibling": source, "mergelab.p.pkg": source, "mergelab.x": source}
    assert imports_of("mergelab.p.mod", source, modules) == {
        "mergelab.p.sibling",
        "mergelab.p.pkg",
        "mergelab.x",
    }


def test_no_import_cycles_between_modules():
    assert find_cycle(import_graph()) is None


def test_imports_only_go_down_the_layers():
    upward = [
        f"{module} (layer {LAYERS[layer_of(module)]}) imports {target} (layer {LAYERS[layer_of(target)]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_methods_import_nothing_of_mergelab_but_methods():
    outside = {
        (module, target)
        for module, targets in import_graph().items()
        if layer_of(module) == 0
        for target in targets
        if layer_of(target) != 0
    }
    assert not outside, outside
