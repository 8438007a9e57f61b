"""IR → GraphSpec → YAML text, the inverse of ``build_graph``."""

from __future__ import annotations

import networkx as nx
import yaml

from ..spec import Defaults, GraphSpec, InputRef, NodeSpec
from .access import has_all_levels, inner_nodes, input_levels, inputs_of
from .build import EDGE_OPTIONS, NODE_OPTIONS

__all__ = ["graph_to_spec", "spec_to_yaml", "graph_to_yaml"]


def graph_to_spec(g: nx.DiGraph) -> GraphSpec:
    nodes = []
    for n in inner_nodes(g):
        refs = []
        for s in inputs_of(g, n):
            opts = {k: g.edges[s, n][k] for k in EDGE_OPTIONS if g.edges[s, n].get(k)}
            refs.append(InputRef(src=s, **opts) if opts else s)
        opts = {k: g.nodes[n][k] for k in NODE_OPTIONS if g.nodes[n].get(k)}
        nodes.append(NodeSpec(id=n, level=g.nodes[n]["level"], inputs=tuple(refs), **opts))
    return GraphSpec(
        name=g.graph["name"],
        description=g.graph.get("description", ""),
        levels=tuple(g.graph["levels"]),
        # spelled out only where it is not implied, so that existing specs export unchanged
        inputs=None if has_all_levels(g) else input_levels(g),
        defaults=Defaults(**g.graph["defaults"]),
        nodes=tuple(nodes),
        outputs=dict(sorted(g.graph["outputs"].items())),
        repeat=g.graph.get("repeat", 1),
    )


def spec_to_yaml(spec: GraphSpec) -> str:
    """Readable YAML: one flow-style line per node, keys in the documented order."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    if spec.derive is None:
        data["defaults"] = spec.defaults.model_dump(mode="json")  # always spelled out, for the reader

    def flow(x) -> str:
        text = yaml.safe_dump(x, default_flow_style=True, sort_keys=False, width=1 << 16).strip()
        return text.removesuffix("...").strip()  # a bare scalar document ends with '...'

    def node_first(n: dict) -> dict:
        head = {k: n[k] for k in ("id", "level", "inputs") if k in n}
        return {**head, **{k: v for k, v in n.items() if k not in head}}

    lines = [f"name: {flow(data['name'])}"]
    if data.get("description"):
        lines.append(f"description: {flow(data['description'])}")
    for key in ("levels", "inputs", "defaults", "derive"):
        if key in data:
            lines.append(f"{key}: {flow(data[key])}")
    if data.get("nodes"):
        lines.append("nodes:")
        lines += [f"  - {flow(node_first(n))}" for n in data["nodes"]]
    if data.get("edges"):
        lines.append("edges:")
        lines += [f"  - {flow(e)}" for e in data["edges"]]
    if "outputs" in data:
        lines.append(f"outputs: {flow({int(k): v for k, v in data['outputs'].items()})}")
    if "repeat" in data:
        lines.append(f"repeat: {data['repeat']}")
    return "\n".join(lines) + "\n"


def graph_to_yaml(g: nx.DiGraph) -> str:
    return spec_to_yaml(graph_to_spec(g))
