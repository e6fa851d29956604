"""No import cycle inside zdlab/: each module's imports point one way (docs/architecture.md).

Read from the source (the AST), not from what Python happened to import: a cycle hidden in a
function-level ("late") import counts as much as one at the top of the file. Imports under
``if TYPE_CHECKING:`` are skipped: they never run, they only name types for annotations.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "zdlab"


def _module_names(root: Path) -> dict[str, Path]:
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # `from . import config` imports the module zdlab.config; `from .db import connect`
                # imports zdlab.db.
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {name for name in found if name in known and name != module}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = _module_names(root)
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by a depth-first search, each once (from its smallest name)."""
    cycles: set[tuple[str, ...]] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt):]
                start = cycle.index(min(cycle))
                cycles.add(tuple(cycle[start:] + cycle[:start]))
            elif nxt > path[0]:  # cycles through a smaller name are found from that name
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return [list(c) for c in sorted(cycles)]


def test_zdlab_has_no_import_cycle():
    graph = import_graph()
    assert "zdlab.db" in graph and "zdlab.config" in graph["zdlab.db"]  # the graph was read at all
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in zdlab/: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles)


def test_a_late_import_counts_as_a_cycle(tmp_path):
    """The detector itself: a function-level import that closes a loop is reported; a
    TYPE_CHECKING one is not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n    return g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import f\n")
    assert find_cycles(import_graph(pkg)) == []
    (pkg / "c.py").write_text("def g():\n    from .a import b\n    return b\n")
    assert find_cycles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.c"]]
