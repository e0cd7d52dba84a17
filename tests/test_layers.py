"""The house's shape, beyond import-linter's layers contract (`make lint`): no import cycles between modules."""

from __future__ import annotations

import grimp


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = stack[stack.index(node) :]
                    del stack[stack.index(node) :]
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return found


def test_cycle_finder_finds_a_cycle_and_only_that():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_imgtrain_imports_itself_back_through_others():
    """Every import counts (inside functions and under TYPE_CHECKING too: grimp reads them all); a package's
    `__init__` importing its own submodules is not a cycle."""
    graph = grimp.build_graph("imgtrain", include_external_packages=False)
    edges = {
        m: {i for i in graph.find_modules_directly_imported_by(m) if not i.startswith(m + ".")} for m in graph.modules
    }
    assert sum(map(len, edges.values())) > 200, "the graph was read (about 300 imports)"
    assert _cycles(edges) == []
