"""The package has no import circle: every `ixt_stream` import, at module level or inside a function
(a lazy import hides a circle from Python, not from a reader), forms an acyclic graph.

The graph is read from the source (ast), so it covers modules whose imports need torch or vLLM too.
An `if TYPE_CHECKING:` block is left out: it never runs, and only names a type for annotations.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ixt_stream

ROOT = Path(ixt_stream.__file__).resolve().parent
GENERATED = ROOT / "wire" / "ixt"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> dict[str, set[str]]:
    """module -> the ixt_stream modules it imports (a package counts for `from pkg import name`)."""
    files = {module_name(p): p for p in ROOT.rglob("*.py") if GENERATED not in p.parents}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        for guard in [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]:
            guard.body = []
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from pkg import sub` imports the submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]  # `import a.b.c` of a name inside a module
                if t and t != mod:
                    edges[mod].add(t)
                # importing a.b.c runs the packages a and a.b first (those above `mod` already run)
                while (t := t.rpartition(".")[0]) and not mod.startswith(t + "."):
                    edges[mod].add(t)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS with colours)."""
    colour = dict.fromkeys(edges, 0)  # 0 new, 1 on the stack, 2 done
    for start in sorted(edges):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(edges[start])))]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
            elif colour[child] == 1:
                path = [n for n, _ in stack]
                return [*path[path.index(child):], child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(edges[child]))))
    return None


def test_the_graph_is_read():
    edges = graph()
    assert "ixt_stream.config" in edges and "ixt_stream.weights.publish" in edges
    assert "ixt_stream.weights.base" in edges["ixt_stream.weights.publish"]


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("edges, has_cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
])
def test_find_cycle(edges, has_cycle):
    assert (find_cycle(edges) is not None) == has_cycle
