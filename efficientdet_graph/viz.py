"""Pictures of a graph: a text summary, Mermaid, Graphviz dot, and PNG/SVG drawn like
Figure 2 of the EfficientDet paper (one row per level, columns by depth, inputs left,
outputs right)."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

import networkx as nx

from .errors import ConfigError
from .graph import (
    canonical_hash,
    depths,
    has_all_levels,
    inner_nodes,
    input_levels,
    inputs_of,
    is_input,
    node_option,
    unroll,
)
from .spec import input_name

__all__ = ["summary", "to_mermaid", "to_dot", "draw", "layout"]


def summary(g: nx.DiGraph) -> str:
    """Nodes per level, edges, fan-in, outputs: what a person checks first."""
    u = unroll(g)
    lo, hi = u.graph["levels"]
    inner = inner_nodes(u)
    lines = [
        f"graph {g.graph['name']}: levels P{lo}-P{hi}, {len(inner)} nodes, {u.number_of_edges()} edges"
        + (f" (repeat {g.graph['repeat']} of {sum(1 for v in g if not is_input(g, v))} nodes)" if g.graph.get("repeat", 1) > 1 else ""),
    ]
    if g.graph.get("description"):
        lines.append(f"  {g.graph['description']}")
    d = g.graph["defaults"]
    lines.append(f"  defaults: fusion={d['fusion']} op={d['op']} act={d['act']} down={d['downsample']} up={d['upsample']}")
    lines.append(f"  structure hash: {canonical_hash(g, ops=False)} (with ops: {canonical_hash(g)})")
    per_level = Counter(u.nodes[v]["level"] for v in inner)
    fan_in = Counter(u.in_degree(v) for v in inner)
    lines.append("  nodes per level: " + ", ".join(f"P{k}: {per_level.get(k, 0)}" for k in range(lo, hi + 1)))
    lines.append("  fan-in: " + ", ".join(f"{k} inputs x{n}" for k, n in sorted(fan_in.items())))
    lines.append("  nodes:")
    width = max((len(v) for v in g), default=4)
    for v in inner_nodes(g):
        extras = [f"{k}={g.nodes[v][k]}" for k in ("fusion", "op", "act") if g.nodes[v].get(k)]
        srcs = ", ".join(inputs_of(g, v))
        lines.append(f"    {v:<{width}}  P{g.nodes[v]['level']}  <- {srcs}" + (f"   [{' '.join(extras)}]" if extras else ""))
    if not has_all_levels(g):
        lines.append("  inputs: " + ", ".join(input_name(k) for k in input_levels(g)))
    lines.append("  outputs: " + ", ".join(f"P{k}={v}" for k, v in sorted(g.graph["outputs"].items())))
    return "\n".join(lines)


def _edge_kind(g: nx.DiGraph, s: str, d: str) -> str:
    a, b = g.nodes[s]["level"], g.nodes[d]["level"]
    return "up" if a > b else "down" if a < b else "same"


def to_mermaid(g: nx.DiGraph) -> str:
    u = unroll(g)
    outs = {v: k for k, v in u.graph["outputs"].items()}
    lines = ["flowchart LR"]
    for v in u:
        label = f"{v}<br/>P{u.nodes[v]['level']}" + (f" → out P{outs[v]}" if v in outs else "")
        shape = ("[/", "/]") if is_input(u, v) else ("([", "])") if v in outs else ("(", ")")
        lines.append(f'  {v}{shape[0]}"{label}"{shape[1]}')
    for s, d in u.edges:
        lines.append(f"  {s} --> {d}")
    return "\n".join(lines) + "\n"


def to_dot(g: nx.DiGraph) -> str:
    u = unroll(g)
    outs = {v: k for k, v in u.graph["outputs"].items()}
    dep = depths(u)
    lines = [f'digraph "{g.graph["name"]}" {{', "  rankdir=LR;", "  node [fontname=Helvetica];"]
    for v in u:
        lvl = u.nodes[v]["level"]
        attrs = [f'label="{v}\\nP{lvl}"', f'pos="{dep[v]},{lvl}!"']
        if is_input(u, v):
            attrs.append("shape=box")
        elif v in outs:
            attrs.append("shape=doublecircle")
        else:
            attrs.append(f'shape=circle, tooltip="{node_option(u, v, "fusion")}"')
        lines.append(f'  "{v}" [{", ".join(attrs)}];')
    colors = {"up": "#1f77b4", "down": "#d62728", "same": "#555555"}
    for s, d in u.edges:
        lines.append(f'  "{s}" -> "{d}" [color="{colors[_edge_kind(u, s, d)]}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def layout(g: nx.DiGraph) -> tuple[dict[str, tuple[float, float]], int]:
    """(x, y) per node of the unrolled graph (y = level, x = column) and the last column.

    Columns follow depth, so every edge runs left to right. The outputs share the last
    column, as in the paper's Figure 2, only where the edges between them join adjacent
    levels (BiFPN's bottom-up chain, drawn as short vertical edges); an output that feeds
    another further away (NAS-FPN) stays at its depth."""
    u = unroll(g)
    outs = {v for v in u.graph["outputs"].values()}
    dep = depths(u)
    final = {v for v in outs if not is_input(u, v)}
    while True:  # only outputs that feed nothing but outputs can share the last column
        keep = {v for v in final if all(d in final for d in u.successors(v))}
        if keep == final:
            break
        final = keep
    chained = all(abs(u.nodes[s]["level"] - u.nodes[d]["level"]) == 1
                  for s, d in u.edges if s in final and d in final)
    if not chained:
        final = set()
    last = 1 + max((dep[v] for v in u if v not in final), default=0) if final else max(dep.values())
    col = {v: (last if v in final else dep[v]) for v in u}
    cells = defaultdict(list)
    for v in u:
        cells[(col[v], u.nodes[v]["level"])].append(v)
    pos = {}
    for (c, lvl), vs in cells.items():
        for i, v in enumerate(vs):
            pos[v] = (c + 0.25 * (i - (len(vs) - 1) / 2), lvl)
    return pos, last


# marker per fusion: a concat node and a sum node look different
_FUSION_MARKERS = {"sum": "o", "fast_normalized": "h", "softmax": "h", "channel_fast_normalized": "H",
                   "channel_softmax": "H", "concat": "D", "gp": "p"}


def draw(g: nx.DiGraph, path: str | os.PathLike) -> Path:
    """Write a PNG or SVG (by suffix) in the layout of the paper's Figure 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ConfigError(f"cannot draw to {path.name!r}: use a .png or .svg file name")
    u = unroll(g)
    lo, hi = u.graph["levels"]
    outs = {v: k for k, v in u.graph["outputs"].items()}
    pos, last = layout(g)

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * (last + 1), 1.0 + 0.9 * (hi - lo + 1)))
    colors = {"up": "#1f77b4", "down": "#d62728", "same": "#444444"}
    for s, d in u.edges:
        (x0, y0), (x1, y1) = pos[s], pos[d]
        ax.annotate(
            "", xy=(x1, y1), xytext=(x0, y0),
            arrowprops=dict(arrowstyle="-|>", color=colors[_edge_kind(u, s, d)], lw=1.0,
                            shrinkA=9, shrinkB=9, connectionstyle="arc3,rad=0.08"),
        )
    for v, (x, y) in pos.items():
        single = len(inputs_of(u, v)) < 2 if not is_input(u, v) else True
        marker = "o" if single else _FUSION_MARKERS.get(node_option(u, v, "fusion"), "8")
        if is_input(u, v):
            style = dict(marker="s", color="#9ecae1", ms=16)
        elif v in outs:
            style = dict(marker=marker, color="#fdae6b", ms=16)
        else:
            style = dict(marker=marker, color="#d9d9d9", ms=14)
        ax.plot([x], [y], linestyle="none", markeredgecolor="black", **style)
    for v, (x, y) in pos.items():
        if len(u) <= 40:
            how = "" if is_input(u, v) else "\n" + " · ".join(
                ([node_option(u, v, "fusion")] if len(inputs_of(u, v)) > 1 else []) + [node_option(u, v, "op")])
            ax.text(x, y - 0.3, v + how, ha="center", va="top", fontsize=5)
    ax.set_yticks(range(lo, hi + 1), [f"P{k}" for k in range(lo, hi + 1)])
    ax.set_xticks([])
    ax.set_ylim(lo - 0.7, hi + 0.5)
    ax.set_xlim(-0.6, last + 0.6)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"{g.graph['name']}: inputs (squares) left, outputs orange; blue = top-down, red = bottom-up; "
                 "fusion by shape (circle sum, hexagon weighted, diamond concat, pentagon gp)", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
