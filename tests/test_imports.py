"""The modules of ``shoal`` import each other without circles.

A circle between two modules means neither can be understood, tested or
replaced without the other (docs/DESIGN: "pass what a part needs in, don't
import its owner"). The graph is read from the source with ``ast``, not by
importing, so an optional dependency that is missing hides nothing.

What counts as an edge from module A to module B:

* every ``import`` / ``from ... import`` statement anywhere in A, at module
  level or inside a function: a function-level import runs as soon as the
  function does, so it ties the two modules together just the same; it only
  postpones the circle to run time;
* imports under ``if TYPE_CHECKING:`` too: the type checker follows them,
  and a reader must know the other module to read the types;
* ``from P import name`` goes to the module ``P.name`` when that is a module
  of the package, else to ``P`` itself (the name is defined in its
  ``__init__``).

What does not: the parent packages Python imports implicitly on the way to a
module (``shoal`` and ``shoal.server`` for ``shoal.server.store``). A
package's ``__init__`` re-exporting its own modules is the house layout
(STYLE.md), not a circle; an explicit ``from shoal import X`` in a module
that ``shoal/__init__`` imports would still be caught.

The generated ``shoal._proto`` modules are part of the graph like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "shoal"


def module_names(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``src``, by dotted name."""
    out: dict[str, Path] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name a ``from`` import's module part refers to."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """The modules of the package that ``module`` imports (see the module docstring)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(module, is_package, node)
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in known:
                    yield full
                elif target in known:
                    yield target


def import_graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(src, package)
    known = set(modules)
    return {
        name: {t for t in imports_of(name, path, known) if t != name}
        for name, path in modules.items()
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph has a few hundred nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                out.append(sorted(component))
    return out


def test_the_package_import_graph_has_no_circles() -> None:
    graph = import_graph()
    assert "shoal.server.daemon" in graph and "shoal.client.api" in graph
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not circles, "import circles:\n" + "\n".join(
        " <-> ".join(c) + "\n    " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c)
        for c in circles
    )


def test_the_checker_sees_circles_through_functions_and_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("A = 1\ndef f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import A\n"
    )
    (pkg / "c.py").write_text("from pkg import A\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.a"},
        "pkg.c": {"pkg"},
    }
    assert [c for c in strongly_connected(graph) if len(c) > 1] == [["pkg.a", "pkg.sub.b"]]


@pytest.mark.parametrize(
    ("graph", "circles"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_strongly_connected_components(
    graph: dict[str, set[str]], circles: list[list[str]]
) -> None:
    found = sorted(c for c in strongly_connected(graph) if len(c) > 1)
    assert found == circles
