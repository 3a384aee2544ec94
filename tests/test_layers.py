"""The modules of cdp_cli import one another without a cycle.

Every import counts: at module level, inside a function (a lazy import is still a
dependency of the design, only a deferred one), and under `if TYPE_CHECKING:` (it does not
run, but the module is written against the other's types: it is how a cycle is hidden, not
removed). The message names every cycle, each import with its file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from tests.conftest import REPO


@dataclass(frozen=True)
class Import:
    target: str  # the module imported
    where: str  # file:line
    type_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        return f"{self.target} ({self.where}{', under TYPE_CHECKING' if self.type_only else ''})"


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package in folder root, by dotted name (a package by its own)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> list[Import]:
    """The modules of `known` that module `name` (at path) imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node, type_only in _walk(tree, False):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here.rsplit(".", node.level - 1)[0] if node.level else ""
            start = ".".join(p for p in (base, node.module or "") if p)
            names = [f"{start}.{alias.name}" for alias in node.names]
            names = [n if n in known else start for n in names]  # a module, or a name in one
        else:
            continue
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{node.lineno}"
        for imported in dict.fromkeys(names):
            target = _known_prefix(imported, known)
            if target and target != name:
                found.append(Import(target, where, type_only))
    return found


def _walk(node: ast.AST, type_only: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, type_only
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for part in child.body:
                yield part, True
                yield from _walk(part, True)
            for part in child.orelse:
                yield part, type_only
                yield from _walk(part, type_only)
        else:
            yield from _walk(child, type_only)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _known_prefix(dotted: str, known: set[str]) -> str | None:
    """The longest leading part of a dotted name that is a module of ours."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def import_graph(root: Path, package: str) -> dict[str, dict[str, Import]]:
    """module -> {module it imports: the first import of it that runs, else the first}."""
    found = modules(root, package)
    graph: dict[str, dict[str, Import]] = {}
    for name, path in found.items():
        graph[name] = {}
        for imported in imports(name, path, set(found)):
            known = graph[name].get(imported.target)
            if known is None or (known.type_only and not imported.type_only):
                graph[name][imported.target] = imported
    return graph


def cycles(graph: dict[str, dict[str, Import]]) -> list[str]:
    """Each group of modules that import one another (a strongly connected component), as
    the shortest cycle through its first module and the group's other members."""
    found = []
    for group in _components(graph):
        first = min(group)
        path = _shortest_cycle(graph, first, group)
        steps = " -> ".join(str(graph[a][b]) for a, b in pairwise(path))
        others = sorted(group - set(path))
        also = f"; also in the loop: {', '.join(others)}" if others else ""
        found.append(f"{first} -> {steps}{also}")
    return sorted(found)


def _components(graph: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _shortest_cycle(graph: dict[str, dict[str, Import]], start: str, group: set[str]) -> list[str]:
    """start, the modules of the shortest way back within group, and start again."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for other in sorted(graph[node]):
                if other == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if other in group and other not in came_from:
                    came_from[other] = node
                    following.append(other)
        frontier = following
    raise AssertionError(f"{start} is in no cycle")  # a component always has one


def test_cdp_cli_imports_no_cycle() -> None:
    graph = import_graph(REPO / "cdp_cli", "cdp_cli")
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100, "every module, every import"
    found = cycles(graph)
    assert not found, "import cycles (each: module -> what it imports -> ...):\n" + "\n".join(found)


def test_the_check_sees_lazy_relative_and_type_only_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "sub" / "__init__.py").write_text("", encoding="utf-8")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n", encoding="utf-8")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n",
        encoding="utf-8",
    )
    (package / "c.py").write_text("from pkg.sub.b import thing\nimport pkg.a\n", encoding="utf-8")
    graph = import_graph(package, "pkg")
    assert {name: set(graph[name]) for name in graph} == {
        "pkg": set(),
        "pkg.sub": set(),
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub.b": {"pkg.a"},
        "pkg.c": {"pkg.sub.b", "pkg.a"},
    }
    where = str(tmp_path)
    assert cycles(graph) == [
        f"pkg.a -> pkg.sub.b ({where}/pkg/a.py:2) -> "
        f"pkg.a ({where}/pkg/sub/b.py:3, under TYPE_CHECKING)"
    ]
