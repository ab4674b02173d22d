"""Dependencies point one way: ``flows -> mend``, ``bench -> mend``, ``tests -> mend``,
``tools -> flows/mend`` (``bench``, ``tests`` and ``tools`` never import each other, except
that tests test the tools).

The import graph is read from the source with :mod:`ast` (nothing is imported, so no
torch): every ``import`` and ``from ... import`` anywhere in a module counts, including
the ones inside functions, because a lazy import is still a dependency. Only imports
under ``if TYPE_CHECKING:`` do not: they name a type for annotations and never run.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mend", "flows", "bench", "tests", "tools")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for top in PACKAGES for p in (ROOT / top).rglob("*.py")}


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement, except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif _is_type_checking(node):
            yield from (n for child in node.orelse for n in [child, *_import_nodes(child)]
                        if isinstance(n, ast.Import | ast.ImportFrom))
        else:
            yield from _import_nodes(node)


def imported(name: str, path: Path) -> set[str]:
    """The project modules ``name`` (at ``path``) imports."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                # ``from a import b``: the module a.b if there is one, else a's attribute b.
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                if target in known:
                    out.add(target)
    out.discard(name)
    return out


@cache
def graph() -> dict[str, frozenset[str]]:
    return {name: frozenset(imported(name, path)) for name, path in modules().items()}


def cycles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _top(name: str) -> str:
    return name.partition(".")[0]


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    # The walker itself: a dependency inside a function counts, and names resolve to modules.
    assert "mend.cli" in graph() and "flows.train_editor" in graph()
    assert "mend.pipeline.training_runs" in graph()["flows.train_editor"]
    assert cycles({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"})}) \
        == [["a", "b", "c"]]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mend.cli\n"
                      "def f():\n    from flows import cli\n    from .. import overrides\n")
    assert imported("mend.pipeline.m", module) == {"flows.cli", "mend.overrides"}


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize(("source", "forbidden"), [
    ("mend", "flows"),   # the library never imports the orchestration around it
    ("mend", "bench"),
    ("mend", "tests"),
    ("bench", "tests"),  # benchmarks use the library, not the test suite's helpers
    ("tests", "bench"),  # and the tests test the library: what a bench needs tested lives there
    ("flows", "tests"),
    ("flows", "bench"),
    ("mend", "tools"),   # tools/ are a checkout's developer tools, used by nothing shipped
    ("flows", "tools"),
    ("tools", "tests"),
    ("tools", "bench"),
])
def test_dependencies_point_one_way(source, forbidden):
    wrong = sorted(
        f"{name} -> {target}"
        for name, targets in graph().items() if _top(name) == source
        for target in targets if _top(target) == forbidden
    )
    assert not wrong, f"{source} must not import {forbidden}:\n" + "\n".join(wrong)
