"""The package's import graph has no cycle: every module can be read (and imported) after the modules it uses.

The graph is read from the source with ``ast``, imports inside functions included (a function-level import is how a
cycle usually hides). ``from minimoe.x import y`` is an edge to ``minimoe.x.y`` when that is a module, else to
``minimoe.x``; a package's ``__init__`` importing its own modules is the ordinary direction of the graph. The
package spells every import absolutely (``from minimoe.moe.gate import …``), so that a reader sees where a name
lives; the graph builder insists on it.
"""

import ast
from pathlib import Path

import minimoe

ROOT = Path(minimoe.__file__).parent


def _modules() -> dict[str, Path]:
    """Dotted name -> file for every module of minimoe (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the minimoe modules it imports, anywhere in its source."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}:{node.lineno}: a relative import; spell it from minimoe"
                base = node.module
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, …, a], or None (depth-first search with three colours)."""
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_module_and_function_level_imports():
    graph = import_graph()
    assert {"minimoe.sampling", "minimoe.speculative"} <= graph["minimoe.generate"]
    assert "minimoe.optim" in graph["minimoe.train"] and "minimoe.model" in graph["minimoe"]
    assert len(graph) > 40 and all(name.startswith("minimoe") for name in graph)


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None
