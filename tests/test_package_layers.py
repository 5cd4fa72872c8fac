"""The package's layering: no import cycle, and a core that imports nothing of the book's tools.

The core is the detector (`boxes` ... `model`), its training, inference, evaluation and checkpoint
files; plotting (`viz`, matplotlib), the exercises, the error analysis and the lab build on it and
are never imported by it.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fasterrcnn_edu"
CORE = ("boxes", "anchors", "labeling", "losses", "nms", "proposals", "rpn", "roi_heads", "backbones",
        "model", "transforms", "config", "initialisation", "fileio", "checkpoint", "training", "inference", "evaluation")
NOT_CORE = ("matplotlib", "fasterrcnn_edu.viz", "fasterrcnn_edu.exercises", "fasterrcnn_edu.error_analysis",
            "fasterrcnn_edu.lab")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str] = frozenset()) -> set[str]:
    """Every module the file imports, at the top level or inside a function: `from fasterrcnn_edu
    import viz` counts as the module fasterrcnn_edu.viz when it is one of `modules`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            found.update(subs or [node.module])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the fasterrcnn_edu modules it imports anywhere (top level or inside a function)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # A package's __init__ runs on any import of its submodules: not a dependency of its own.
        graph[name] = {t for t in imports(path, set(modules))
                       if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle [a, b, ..., a] of `graph`, or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    """backbones -> checkpoint -> model -> backbones was one (closed by an import inside load_model)."""
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_checkpoint_files_are_read_below_the_model_and_loaded_above_it():
    graph = import_graph()
    assert "fasterrcnn_edu.checkpoint" not in graph["fasterrcnn_edu.backbones"]
    assert "fasterrcnn_edu.fileio" in graph["fasterrcnn_edu.backbones"]
    assert "fasterrcnn_edu.model" in graph["fasterrcnn_edu.checkpoint"]


def test_the_core_imports_no_plotting_and_no_book_tools():
    """Importing the whole core in a fresh interpreter loads neither matplotlib nor viz, exercises,
    error_analysis or lab."""
    code = ("import importlib, json, sys\n"
            f"for name in {CORE!r}: importlib.import_module('fasterrcnn_edu.' + name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    loaded = json.loads(out)
    assert "fasterrcnn_edu.training" in loaded and "fasterrcnn_edu.checkpoint" in loaded
    leaked = [m for m in loaded if any(m == bad or m.startswith(bad + ".") for bad in NOT_CORE)]
    assert leaked == []


def test_no_core_module_imports_plotting_or_book_tools_even_inside_a_function():
    """training.py once imported viz (and so matplotlib) inside the function that drew losses.png."""
    leaks = {name: sorted(m for m in imports(PACKAGE / f"{name}.py", {f"fasterrcnn_edu.{n}" for n in NOT_CORE})
                          if any(m == bad or m.startswith(bad + ".") for bad in NOT_CORE))
             for name in CORE}
    assert {name: found for name, found in leaks.items() if found} == {}
