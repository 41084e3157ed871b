"""The tree is the architecture: no import circles, no private imports, a small top level,
small modules.

How the imports are read: every ``.py`` file under ``octave_bulk/`` is parsed with ``ast`` and
every ``import`` / ``from ... import`` node anywhere in it is taken - at module level, inside
functions and methods, under ``if TYPE_CHECKING:`` and in ``try`` blocks alike (a deferred or
type-only import is still a dependency that a reader has to follow). Relative imports are
resolved against the importing module's package. ``from pkg import name`` is an edge to the
module ``pkg.name`` when that is a module of the package, else to ``pkg`` itself (its
``__init__``); ``import a.b.c`` is an edge to ``a.b.c``. A package's ``__init__`` is not an
implicit dependency of its submodules (Python runs it first, but it only re-exports).

A circle is a strongly connected component of that graph with more than one module (Tarjan's
algorithm, below); a module importing itself is not counted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "octave_bulk"
MAX_LINES = 450
MAX_TOP_LEVEL_MODULES = 6

# Known exceptions, each with its reason (none today): an entry that no longer applies fails
# test_the_known_exceptions_still_apply, so the lists cannot hide a new problem.
KNOWN_LONG: dict[str, str] = {}
KNOWN_CIRCLES: dict[frozenset[str], str] = {}
KNOWN_PRIVATE_IMPORTS: dict[tuple[str, str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, str]]:
    """(imported module, imported name or "") for every import in the file."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:
                    yield submodule, ""
                else:
                    yield source, alias.name


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """The edges between octave_bulk's modules, and (importer, module, name) for every private
    name imported from another module."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    private = []
    for name, path in known.items():
        for target, imported in imports_of(name, path, known):
            if target not in known or target == name:
                continue
            graph[name].add(target)
            if imported.startswith("_") and not imported.startswith("__"):
                private.append((name, target, imported))
    return graph, private


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                found.append(component)
    return found


def test_the_checker_finds_a_circle_and_leaves_a_chain_alone() -> None:
    chain = {"a": {"b"}, "b": {"c"}, "c": set()}
    assert all(len(c) == 1 for c in strongly_connected(chain))
    circle = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert {"a", "b", "c"} in strongly_connected(circle)


def test_no_import_circles() -> None:
    graph, _ = import_graph()
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    unknown = [sorted(c) for c in circles if frozenset(c) not in KNOWN_CIRCLES]
    assert unknown == []


def test_no_module_imports_a_private_name_of_another() -> None:
    _, private = import_graph()
    assert [p for p in private if p not in KNOWN_PRIVATE_IMPORTS] == []


def test_the_top_level_holds_few_modules() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_module_is_over_450_lines() -> None:
    long = {
        name: lines
        for name, path in modules().items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert {name: n for name, n in long.items() if name not in KNOWN_LONG} == {}


def test_the_known_exceptions_still_apply() -> None:
    """An exception fixed elsewhere is removed here, so the allow-list never hides a new one."""
    graph, private = import_graph()
    circles = {frozenset(c) for c in strongly_connected(graph) if len(c) > 1}
    assert set(KNOWN_CIRCLES) <= circles
    assert set(KNOWN_PRIVATE_IMPORTS) <= set(private)
    known = modules()
    for name in KNOWN_LONG:
        assert len(known[name].read_text(encoding="utf-8").splitlines()) > MAX_LINES, name
