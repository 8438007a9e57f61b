"""Read-only helpers over the IR: effective options, ordered inputs, stable order."""

from __future__ import annotations

import networkx as nx

__all__ = [
    "is_input", "inputs_of", "node_option", "edge_option", "topo_order", "inner_nodes", "depths",
    "input_levels", "output_levels", "has_all_levels",
]


def is_input(g: nx.DiGraph, node: str) -> bool:
    return g.nodes[node]["role"] == "input"


def input_levels(g: nx.DiGraph) -> tuple[int, ...]:
    """The levels that have a graph input ``P{k}_in``, ascending (every level of
    ``levels`` unless the spec named fewer with ``inputs:``)."""
    return tuple(sorted(d["level"] for _, d in g.nodes(data=True) if d["role"] == "input"))


def output_levels(g: nx.DiGraph) -> tuple[int, ...]:
    """The levels that have an output, ascending (the order a compiled module returns them)."""
    return tuple(sorted(g.graph["outputs"]))


def has_all_levels(g: nx.DiGraph) -> bool:
    """Whether ``g`` takes an input and gives an output at every level of ``levels``
    (the shape every graph had before ``inputs:`` existed)."""
    lo, hi = g.graph["levels"]
    every = tuple(range(lo, hi + 1))
    return input_levels(g) == every and output_levels(g) == every


def inputs_of(g: nx.DiGraph, node: str) -> list[str]:
    """The sources feeding ``node``, in the order the spec gave them."""
    return sorted(g.predecessors(node), key=lambda s: g.edges[s, node]["index"])


def node_option(g: nx.DiGraph, node: str, kind: str) -> str:
    """The node's ``fusion``/``op``/``act``: its own setting, else the spec default."""
    return g.nodes[node].get(kind) or g.graph["defaults"][kind]


def edge_option(g: nx.DiGraph, src: str, dst: str, kind: str) -> str:
    return g.edges[src, dst].get(kind) or g.graph["defaults"][kind]


def topo_order(g: nx.DiGraph) -> list[str]:
    """A topological order that keeps the order nodes were written in wherever it can."""
    position = {n: i for i, n in enumerate(g)}
    return list(nx.lexicographical_topological_sort(g, key=position.__getitem__))


def inner_nodes(g: nx.DiGraph) -> list[str]:
    """The non-input nodes in topological order."""
    return [n for n in topo_order(g) if not is_input(g, n)]


def depths(g: nx.DiGraph) -> dict[str, int]:
    """Longest path from any input: inputs are at depth 0."""
    d: dict[str, int] = {}
    for n in topo_order(g):
        preds = list(g.predecessors(n))
        d[n] = 1 + max(d[p] for p in preds) if preds else 0
    return d
