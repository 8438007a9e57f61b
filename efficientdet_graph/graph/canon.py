"""Structure up to node names: a canonical hash and an exact comparison with a readable diff."""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter

import networkx as nx
from networkx.algorithms.isomorphism import DiGraphMatcher

from ..spec import ORDERED_FUSIONS
from .access import edge_option, inputs_of, is_input, node_option
from .unroll import unroll

__all__ = ["canonical_hash", "same_structure", "describe_difference"]


def _option(g: nx.DiGraph, v: str, key: str) -> str:
    """A node's option as it acts: a node with one input fuses nothing (the compiler skips
    its fusion), so its fusion setting is no part of what the network computes."""
    if key == "fusion" and g.in_degree(v) == 1:
        return "-"
    return node_option(g, v, key)


def _labelled(g: nx.DiGraph, ops: bool) -> nx.DiGraph:
    """Unrolled copy whose nodes and edges carry one string label each, names left out.

    With ``ops=False`` only the topology counts: levels, edges, input and output
    roles. With ``ops=True`` fusions, node ops, activations and resampling count
    too, and so does input order where the fusion depends on it."""
    u = unroll(g)
    out_of = {node: level for level, node in u.graph["outputs"].items()}
    lab = nx.DiGraph(levels=tuple(u.graph["levels"]))
    for v, data in u.nodes(data=True):
        if is_input(u, v):
            label = f"in|{data['level']}|out={out_of.get(v, '-')}"
        else:
            opts = "|".join(_option(u, v, k) for k in ("fusion", "op", "act")) if ops else ""
            label = f"node|{data['level']}|{opts}|out={out_of.get(v, '-')}"
        lab.add_node(v, label=label)
    for s, d in u.edges:
        label = ""
        if ops:
            ordered = _option(u, d, "fusion") in ORDERED_FUSIONS
            resample = "|".join(edge_option(u, s, d, k) for k in ("downsample", "upsample"))
            label = f"{resample}|{u.edges[s, d]['index'] if ordered else '*'}"
        lab.add_edge(s, d, label=label)
    return lab


def canonical_hash(g: nx.DiGraph, ops: bool = True) -> str:
    """A hash equal for graphs that differ only in node names (and in input order where it
    does not matter). Weisfeiler-Lehman: equal graphs always hash equal, and a clash of
    unequal ones is rare; ``same_structure`` decides for certain."""
    lab = _labelled(g, ops)
    with warnings.catch_warnings():  # networkx notes its directed-graph hashes changed in 3.5
        warnings.simplefilter("ignore", UserWarning)
        fwd = nx.weisfeiler_lehman_graph_hash(lab, node_attr="label", edge_attr="label", iterations=6)
        bwd = nx.weisfeiler_lehman_graph_hash(lab.reverse(), node_attr="label", edge_attr="label", iterations=6)
    return hashlib.sha256(f"{lab.graph['levels']}|{fwd}|{bwd}".encode()).hexdigest()[:16]


def same_structure(a: nx.DiGraph, b: nx.DiGraph, ops: bool = False) -> bool:
    """Whether ``a`` and ``b`` are the same network up to node names: the same levels,
    edges and input/output roles, and with ``ops=True`` the same operations."""
    la, lb = _labelled(a, ops), _labelled(b, ops)
    if la.graph["levels"] != lb.graph["levels"]:
        return False
    if la.number_of_nodes() != lb.number_of_nodes() or la.number_of_edges() != lb.number_of_edges():
        return False
    same = lambda x, y: x["label"] == y["label"]  # noqa: E731
    return DiGraphMatcher(la, lb, node_match=same, edge_match=same).is_isomorphic()


def _signature(g: nx.DiGraph, v: str, ops: bool) -> str:
    """A node described without names: level, options, where its inputs come from."""
    d = g.nodes[v]
    srcs = ",".join(
        f"{'in' if is_input(g, s) else 'node'}@P{g.nodes[s]['level']}"
        for s in sorted(inputs_of(g, v), key=lambda s: (g.nodes[s]["level"], is_input(g, s)))
    )
    opts = " " + "/".join(_option(g, v, k) for k in ("fusion", "op", "act")) if ops else ""
    return f"P{d['level']}{opts} <- [{srcs}]"


def describe_difference(
    a: nx.DiGraph, b: nx.DiGraph, name_a: str = "A", name_b: str = "B", ops: bool = False
) -> str:
    """A person-readable account of how ``a`` and ``b`` differ."""
    ua, ub = unroll(a), unroll(b)
    lines = []
    if tuple(ua.graph["levels"]) != tuple(ub.graph["levels"]):
        lines.append(f"levels: {name_a} {list(ua.graph['levels'])}, {name_b} {list(ub.graph['levels'])}")
    na = sum(1 for v in ua if not is_input(ua, v))
    nb = sum(1 for v in ub if not is_input(ub, v))
    lines.append(f"nodes: {name_a} {na}, {name_b} {nb};  edges: {name_a} {ua.number_of_edges()}, {name_b} {ub.number_of_edges()}")
    by_sig_a: dict[str, list[str]] = {}
    by_sig_b: dict[str, list[str]] = {}
    for g, by_sig in ((ua, by_sig_a), (ub, by_sig_b)):
        for v in g:
            if not is_input(g, v):
                by_sig.setdefault(_signature(g, v, ops), []).append(v)
    sig_a = Counter({s: len(v) for s, v in by_sig_a.items()})
    sig_b = Counter({s: len(v) for s, v in by_sig_b.items()})
    only_a, only_b = sig_a - sig_b, sig_b - sig_a
    for title, only, by_sig in ((f"only in {name_a}", only_a, by_sig_a), (f"only in {name_b}", only_b, by_sig_b)):
        if only:
            lines.append(f"{title}:")
            for sig, count in sorted(only.items()):
                names = ", ".join(by_sig[sig][:4]) + (", ..." if len(by_sig[sig]) > 4 else "")
                lines.append(f"  {count} x {sig}   ({names})")
    if not only_a and not only_b:
        lines.append("every node has a counterpart by level and fan-in, but they are wired differently")
    return "\n".join(lines)
