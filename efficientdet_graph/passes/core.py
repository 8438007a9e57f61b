"""The analysers: pure functions ``DiGraph -> PassResult`` that never touch their input.

The first three are the BiFPN rules of EfficientDet §3.2: applied to PANet they
give BiFPN.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import networkx as nx

from ..errors import PassError
from ..graph import inner_nodes, inputs_of, is_input, stack_layers, topo_order, unroll
from ..spec import input_name

__all__ = ["PassResult", "prune_single_input", "add_same_level_skips", "repeat", "remove_dead_nodes", "expand_repeat"]


class PassResult(NamedTuple):
    graph: nx.DiGraph
    changes: tuple[str, ...]


def _copy(g: nx.DiGraph) -> nx.DiGraph:
    out = g.copy()
    out.graph = copy.deepcopy(g.graph)
    return out


def _reindex(g: nx.DiGraph, node: str, order: list[str]) -> None:
    for i, s in enumerate(order):
        g.edges[s, node]["index"] = i


def prune_single_input(g: nx.DiGraph) -> PassResult:
    """Remove every node with exactly one input; its consumers take that input directly
    and an output it was is remapped to that input. A node that is its level's output
    but whose input lies at another level is kept (an output must stay at its level)."""
    out, changes, kept = _copy(g), [], set()
    changed = True
    while changed:
        changed = False
        for v in topo_order(out):
            if is_input(out, v) or out.in_degree(v) != 1:
                continue
            (src,) = out.predecessors(v)
            levels = [lvl for lvl, o in out.graph["outputs"].items() if o == v]
            if levels and out.nodes[src]["level"] != out.nodes[v]["level"]:
                if v not in kept:
                    kept.add(v)
                    changes.append(f"kept {v}: it is the P{levels[0]} output and its one input {src} is at another level")
                continue
            consumers = list(out.successors(v))
            for c in consumers:
                order = inputs_of(out, c)
                data = dict(out.edges[v, c])
                out.remove_edge(v, c)
                if out.has_edge(src, c):
                    order.remove(v)
                    changes.append(f"{c} already took {src}: kept one edge")
                else:
                    out.add_edge(src, c, **data)
                    order[order.index(v)] = src
                _reindex(out, c, order)
            for lvl in levels:
                out.graph["outputs"][lvl] = src
            out.remove_node(v)
            took = f"; {', '.join(consumers)} now take {src}" if consumers else ""
            remap = f"; output P{levels[0]} is now {src}" if levels else ""
            changes.append(f"removed {v} (its only input was {src}){took}{remap}")
            changed = True
            break
    return PassResult(out, tuple(changes))


def add_same_level_skips(g: nx.DiGraph) -> PassResult:
    """Add an edge from the level-k input to the level-k output wherever it is missing
    (levels without an input, made inside the graph, get none)."""
    out, changes = _copy(g), []
    for level, node in sorted(out.graph["outputs"].items()):
        src = input_name(level)
        if src not in out or is_input(out, node) or out.has_edge(src, node):
            continue
        out.add_edge(src, node, index=out.in_degree(node))
        changes.append(f"added edge {src} -> {node}")
    return PassResult(out, tuple(changes))


def remove_dead_nodes(g: nx.DiGraph) -> PassResult:
    """Remove nodes from which no output can be reached (graph inputs always stay)."""
    out = _copy(g)
    live = set(out.graph["outputs"].values())
    for o in list(live):
        live |= nx.ancestors(out, o)
    # A live node's inputs are live too, so removing dead nodes leaves every index intact.
    dead = [v for v in inner_nodes(out) if v not in live]
    out.remove_nodes_from(dead)
    return PassResult(out, tuple(f"removed {v} (reaches no output)" for v in dead))


def repeat(g: nx.DiGraph, n: int) -> PassResult:
    """Stack ``n`` copies of the graph (its own ``repeat`` unrolled first), outputs of
    copy k feeding the inputs of copy k+1 by level."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise PassError(f"repeat: n must be an integer, got {n!r}")
    base = unroll(g)
    out = stack_layers(base, n)
    count = sum(1 for v in out if not is_input(out, v))
    return PassResult(out, (f"stacked {n} copies: {count} nodes, {out.number_of_edges()} edges",))


def expand_repeat(g: nx.DiGraph) -> PassResult:
    """Write the graph's ``repeat: N`` out as N explicit layers."""
    r = g.graph.get("repeat", 1)
    if r == 1:
        return PassResult(_copy(g), ())
    return PassResult(unroll(g), (f"expanded repeat: {r} into explicit layers",))
