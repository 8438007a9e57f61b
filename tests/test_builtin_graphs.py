"""Every built-in graph loads, validates and round-trips; the published ones match the papers (docs/reference.md)."""

import networkx as nx
import pytest

from efficientdet_graph import build_graph, generate, graph_to_yaml, load_graph, load_spec_text, same_structure
from efficientdet_graph.graph import inputs_of, is_input
from efficientdet_graph.graph.topologies import GENERATORS
from efficientdet_graph.spec.builtin import builtin_dir, builtin_names

BUILTINS = builtin_names("graphs")


def test_all_documented_builtins_are_shipped():
    assert {"fpn", "panet", "bifpn", "nasfpn", "fully_connected", "qufpn", "gfpn", "nofusion"} <= set(BUILTINS)
    assert (builtin_dir("graphs") / "bifpn.yaml").is_file()


def exact(g: nx.DiGraph):
    """Everything about a graph, names included (for lossless round trips)."""
    nodes = {v: dict(d) for v, d in g.nodes(data=True)}
    edges = {(s, d): dict(a) for s, d, a in g.edges(data=True)}
    attrs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in g.graph.items()}
    attrs["levels"] = tuple(attrs["levels"])
    return nodes, edges, attrs


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_loads_and_round_trips(name):
    g = load_graph(name)
    text = graph_to_yaml(g)
    spec, src = load_spec_text(text, f"{name}-roundtrip.yaml")
    again = build_graph(spec, src)
    assert exact(again) == exact(g)
    assert graph_to_yaml(again) == text  # the YAML form is a fixed point


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_is_a_complete_pyramid(name):
    g = load_graph(name)
    lo, hi = g.graph["levels"]
    assert sorted(g.graph["outputs"]) == list(range(lo, hi + 1))
    for level, node in g.graph["outputs"].items():
        assert g.nodes[node]["level"] == level
    assert nx.is_directed_acyclic_graph(g)


# Node and edge counts stated in the EfficientDet paper, Fig. 2 and §3.2 (docs/reference.md) (and our documented choices for the
# graphs whose edges are not published).
COUNTS = {"fpn": (5, 9), "panet": (10, 18), "bifpn": (8, 19), "qufpn": (21, 48), "fully_connected": (10, 58),
          "gfpn": (25, 115), "nofusion": (5, 5)}  # GFPN: docs/reference.md, "GFPN"; nofusion: one edge per level


@pytest.mark.parametrize("name,counts", sorted(COUNTS.items()))
def test_counts_match_reference(name, counts):
    g = load_graph(name)
    assert (sum(1 for v in g if not is_input(g, v)), g.number_of_edges()) == counts


def test_bifpn_is_exactly_the_published_layer():
    # EfficientDet paper Fig. 2d / §3.2 (docs/reference.md, "BiFPN"), typed in by hand.
    published = {
        "P6_td": ["P6_in", "P7_in"],
        "P5_td": ["P5_in", "P6_td"],
        "P4_td": ["P4_in", "P5_td"],
        "P3_out": ["P3_in", "P4_td"],
        "P4_out": ["P4_in", "P4_td", "P3_out"],
        "P5_out": ["P5_in", "P5_td", "P4_out"],
        "P6_out": ["P6_in", "P6_td", "P5_out"],
        "P7_out": ["P7_in", "P6_out"],
    }
    g = load_graph("bifpn")
    assert {v: inputs_of(g, v) for v in g if not is_input(g, v)} == published
    assert g.graph["defaults"]["fusion"] == "fast_normalized"


def test_nasfpn_is_the_published_cell():
    # NAS-FPN paper (arXiv 1904.07392) Fig. 7b, as docs/reference.md: n1 = GP(P6_in, P4_in)@4; n2 = SUM(n1, P4_in)@4; P3_out = SUM(n2, P3_in);
    # P4_out = SUM(P3_out, n2); P5_out = SUM(P5_in, GP(P4_out, P3_out));
    # P7_out = SUM(P7_in, GP(P5_out, n2)); P6_out = GP(P7_out, P5_out).
    g = load_graph("nasfpn")
    fusion = lambda v: g.nodes[v].get("fusion", g.graph["defaults"]["fusion"])  # noqa: E731
    cell = {v: (g.nodes[v]["level"], fusion(v), inputs_of(g, v)) for v in g if not is_input(g, v)}
    assert cell["n1"] == (4, "gp", ["P6_in", "P4_in"])
    assert cell["n2"] == (4, "sum", ["n1", "P4_in"])
    assert cell["P3_out"] == (3, "sum", ["n2", "P3_in"])
    assert cell["P4_out"] == (4, "sum", ["P3_out", "n2"])
    (gp5,) = [i for i in cell["P5_out"][2] if i != "P5_in"]
    assert cell["P5_out"][:2] == (5, "sum") and cell[gp5] == (5, "gp", ["P4_out", "P3_out"])
    (gp7,) = [i for i in cell["P7_out"][2] if i != "P7_in"]
    assert cell["P7_out"][:2] == (7, "sum") and cell[gp7] == (7, "gp", ["P5_out", "n2"])
    assert cell["P6_out"] == (6, "gp", ["P7_out", "P5_out"])


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator_reproduces_the_handwritten_yaml(name):
    assert same_structure(build_graph(generate(name, 3, 7)), load_graph(name), ops=True)


@pytest.mark.parametrize("lo,hi,nodes,edges", [(3, 8, 10, 24), (3, 7, 8, 19), (2, 7, 10, 24), (3, 4, 2, 4)])
def test_bifpn_generator_counts(lo, hi, nodes, edges):
    # P3-P8 (D7x): 10 nodes, 24 edges (docs/reference.md). In general 2(n-1) nodes, 5n-6 edges.
    g = build_graph(generate("bifpn", lo, hi))
    assert (sum(1 for v in g if not is_input(g, v)), g.number_of_edges()) == (nodes, edges)
