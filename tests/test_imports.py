"""The package's modules import one another without cycles (lazy imports inside functions count too).

A module is a node; ``import a.b`` and ``from a import b`` (b a module or a name) are edges to the
module they load, including imports inside functions: a cycle hidden behind a lazy import is still
a cycle between two ideas. Run as a script to list the cycles: ``python tests/test_imports.py``.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tuckerref"


def module_names(root: Path = PACKAGE) -> dict:
    """{dotted module name: source path} of every module of the package (a package by its __init__)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name,) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _target(name: str, modules: dict) -> str | None:
    """The package module that importing ``name`` loads: ``name`` itself, or its longest module prefix."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = PACKAGE) -> dict:
    """{module: set of package modules it imports}."""
    modules = module_names(root)
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            edges.update(t for t in (_target(t, modules) for t in targets) if t is not None and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_import_graph_resolves_relative_imports():
    graph = import_graph()
    assert "tuckerref.kernels.conv3d" in graph["tuckerref.kernels.tucker2"]
    assert "tuckerref.nn" in graph["tuckerref.compress"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    found = cycles(import_graph(root))
    for component in found:
        print(" <-> ".join(component))
    print(f"{len(found)} import cycle(s) in {root}")
