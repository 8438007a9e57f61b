"""What ``repeat: N`` means: N copies of the layer, layer k's outputs feeding layer k+1."""

from __future__ import annotations

import networkx as nx

from ..errors import PassError
from ..spec import MAX_NODES, input_name
from .access import input_levels, is_input, output_levels

__all__ = ["stack_layers", "unroll", "layer_name"]


def layer_name(layer: int, node: str) -> str:
    """Name of ``node`` in copy ``layer`` (1-based) of a repeated graph."""
    return f"L{layer}_{node}"


def stack_layers(g: nx.DiGraph, n: int) -> nx.DiGraph:
    """``n`` copies of ``g`` (taken as one layer, its own ``repeat`` ignored), chained by level."""
    if n < 1:
        raise PassError(f"repeat needs n >= 1, got {n}")
    if n == 1:
        out = g.copy()
        out.graph = {**g.graph, "outputs": dict(g.graph["outputs"]), "repeat": 1}
        return out
    inner = [v for v in g if not is_input(g, v)]
    if len(inner) * n > MAX_NODES:
        raise PassError(f"repeating {len(inner)} nodes {n} times exceeds the limit of {MAX_NODES} nodes")
    ins = input_levels(g)
    if output_levels(g) != ins:
        raise PassError(f"cannot repeat: copy k's outputs feed copy k+1's inputs, but the output levels "
                        f"{list(output_levels(g))} are not the input levels {list(ins)}")
    out = nx.DiGraph(**{**g.graph, "outputs": {}, "repeat": 1})
    for level in ins:
        out.add_node(input_name(level), **g.nodes[input_name(level)])
    feed = {level: input_name(level) for level in ins}
    for k in range(1, n + 1):
        rename = {input_name(level): feed[level] for level in feed}
        for v in inner:
            new = layer_name(k, v)
            if new in g:
                raise PassError(f"cannot repeat: layer name {new!r} clashes with an existing node")
            rename[v] = new
            out.add_node(new, **g.nodes[v])
        for s, d, data in g.edges(data=True):
            out.add_edge(rename[s], rename[d], **data)
        feed = {level: rename[node] for level, node in g.graph["outputs"].items()}
    out.graph["outputs"] = dict(feed)
    return out


def unroll(g: nx.DiGraph) -> nx.DiGraph:
    """The graph with its ``repeat`` expanded into explicit layers (``repeat`` becomes 1)."""
    return stack_layers(g, g.graph.get("repeat", 1))
