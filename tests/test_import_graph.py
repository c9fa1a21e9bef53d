"""The project's own modules import each other without cycles.

The graph is built from the source (AST), not by importing: every ``.py`` file of the project
outside ``.venv``, ``build`` and ``tests``, with every import it makes counted, wherever it is
(top level, inside a function, under ``if TYPE_CHECKING:``), since each of them ties the two
modules together for a reader and for a refactor. ``import a.b.c`` is an edge to ``a.b.c``
only: the implicit import of the parent packages is not an edge (a package's ``__init__``
may re-export its modules).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = frozenset({".venv", "venv", "build", "dist", "tests", ".git", "node_modules"})

Graph = dict[str, set[str]]


def project_files(root: Path = REPO) -> Iterator[Path]:
    """Every project ``.py`` file outside ``SKIP_DIRS`` and hidden folders."""
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts[:-1]
        if any(p in SKIP_DIRS or p.startswith(".") for p in parts):
            continue
        yield path


def module_name(path: Path, root: Path = REPO) -> str:
    """``strategies/ml/__init__.py`` -> ``strategies.ml``; ``cli.py`` -> ``cli``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The project modules one import statement names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
        else:
            target = node.module or ""
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` mod
            yield sub if sub in known else target


def build_graph(files: Iterable[Path], root: Path = REPO) -> Graph:
    """Module -> the project modules it imports."""
    paths = list(files)
    names = {module_name(p, root): p for p in paths}
    known = set(names)
    graph: Graph = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imported(node, name, is_package, known):
                    if target in known and target != name:
                        edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with a cycle, found
    with Tarjan's algorithm (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
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
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    components.append(sorted(comp))
    return [_cycle_in(graph, comp) for comp in components]


def _cycle_in(graph: Graph, comp: list[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component."""
    members = set(comp)
    start = comp[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start]
                if child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    return comp  # unreachable for a real component


def describe(cycle: list[str]) -> str:
    """``a -> b -> a``."""
    return " -> ".join(cycle)


@pytest.fixture(scope="module")
def graph() -> Graph:
    """The project's import graph."""
    return build_graph(project_files())


def test_graph_sees_the_project(graph: Graph) -> None:
    """The walk finds the packages and their edges (an empty graph would pass vacuously)."""
    for module in ("cli", "strategies.signals", "strategies.ml", "brokers.alpaca_sim.server",
                   "ratchet.commands.train"):
        assert module in graph
    assert "strategies.signal_types" in graph["strategies.signals"]
    assert "brokers.alpaca_sim.httputil" in graph["brokers.alpaca_sim.server"]
    assert not any(m.startswith(("tests", ".venv")) for m in graph)


def test_no_import_cycles(graph: Graph) -> None:
    """No module imports, directly or through others, a module that imports it back."""
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(c) for c in cycles)


def test_finder_names_a_cycle(tmp_path: Path) -> None:
    """The detector reports a cycle through a function-local, a TYPE_CHECKING and a relative
    import (the shapes of the ``ml`` <-> ``signals`` and ``server`` <-> ``httputil`` cycles)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("A = 1\ndef f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from .c import C\n")
    (pkg / "c.py").write_text("import pkg.a\nC = 1\n")
    (tmp_path / "leaf.py").write_text("import pkg\n")
    g = build_graph(project_files(tmp_path), tmp_path)
    assert g["pkg"] == {"pkg.a"}
    assert find_cycles(g) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    (pkg / "c.py").write_text("C = 1\n")
    assert find_cycles(build_graph(project_files(tmp_path), tmp_path)) == []
