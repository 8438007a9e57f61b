"""GiraffeDet's GFPN (docs/reference.md, "GFPN"): the built-in's edges are the published
rules, typed in by hand; the generator keeps the rules at every depth and level range; the
compiled network runs."""

from __future__ import annotations

import pytest
import torch

from efficientdet_graph import build_graph, generate, load_graph
from efficientdet_graph.compile import compile_graph
from efficientdet_graph.graph import inputs_of, is_input
from efficientdet_graph.graph.topologies import gfpn

# graphs/gfpn.yaml by the rules, written out by hand (not by the generator). Per node: the
# same-level log2(n)-links (layers l - 1, l - 2, l - 4 where >= 0; layer 0 = the inputs),
# then queen-fusion's previous-layer diagonals (level k - 1 and k + 1), then the node before
# it on its own layer's path (k + 1 in the top-down layers 1, 3, 5; k - 1 in 2, 4).
HAND = {
    # layer 1, top-down: links {0}
    "L1_P7": {"P7_in", "P6_in"},
    "L1_P6": {"P6_in", "P5_in", "P7_in", "L1_P7"},
    "L1_P5": {"P5_in", "P4_in", "P6_in", "L1_P6"},
    "L1_P4": {"P4_in", "P3_in", "P5_in", "L1_P5"},
    "L1_P3": {"P3_in", "P4_in", "L1_P4"},
    # layer 2, bottom-up: links {1, 0}
    "L2_P3": {"L1_P3", "P3_in", "L1_P4"},
    "L2_P4": {"L1_P4", "P4_in", "L1_P3", "L1_P5", "L2_P3"},
    "L2_P5": {"L1_P5", "P5_in", "L1_P4", "L1_P6", "L2_P4"},
    "L2_P6": {"L1_P6", "P6_in", "L1_P5", "L1_P7", "L2_P5"},
    "L2_P7": {"L1_P7", "P7_in", "L1_P6", "L2_P6"},
    # layer 3, top-down: links {2, 1}
    "L3_P7": {"L2_P7", "L1_P7", "L2_P6"},
    "L3_P6": {"L2_P6", "L1_P6", "L2_P5", "L2_P7", "L3_P7"},
    "L3_P5": {"L2_P5", "L1_P5", "L2_P4", "L2_P6", "L3_P6"},
    "L3_P4": {"L2_P4", "L1_P4", "L2_P3", "L2_P5", "L3_P5"},
    "L3_P3": {"L2_P3", "L1_P3", "L2_P4", "L3_P4"},
    # layer 4, bottom-up: links {3, 2, 0}
    "L4_P3": {"L3_P3", "L2_P3", "P3_in", "L3_P4"},
    "L4_P4": {"L3_P4", "L2_P4", "P4_in", "L3_P3", "L3_P5", "L4_P3"},
    "L4_P5": {"L3_P5", "L2_P5", "P5_in", "L3_P4", "L3_P6", "L4_P4"},
    "L4_P6": {"L3_P6", "L2_P6", "P6_in", "L3_P5", "L3_P7", "L4_P5"},
    "L4_P7": {"L3_P7", "L2_P7", "P7_in", "L3_P6", "L4_P6"},
    # layer 5, top-down: links {4, 3, 1}
    "L5_P7": {"L4_P7", "L3_P7", "L1_P7", "L4_P6"},
    "L5_P6": {"L4_P6", "L3_P6", "L1_P6", "L4_P5", "L4_P7", "L5_P7"},
    "L5_P5": {"L4_P5", "L3_P5", "L1_P5", "L4_P4", "L4_P6", "L5_P6"},
    "L5_P4": {"L4_P4", "L3_P4", "L1_P4", "L4_P3", "L4_P5", "L5_P5"},
    "L5_P3": {"L4_P3", "L3_P3", "L1_P3", "L4_P4", "L5_P4"},
}


def test_builtin_edges_are_exactly_the_hand_written_rules():
    g = load_graph("gfpn")
    want = {(s, d) for d, srcs in HAND.items() for s in srcs}
    assert set(g.edges) == want
    assert len(want) == 115  # 17 + 22 + 22 + 27 + 27, layer by layer
    assert {v: g.nodes[v]["level"] for v in g if not is_input(g, v)} == {v: int(v[-1]) for v in HAND}
    assert g.graph["outputs"] == {k: f"L5_P{k}" for k in range(3, 8)}
    assert g.graph["defaults"]["fusion"] == "concat"  # GiraffeDet fuses by concatenation


def _where(v: str) -> tuple[int, int]:
    """(layer, level) of a GFPN node or input, read from its name."""
    if v.endswith("_in"):
        return 0, int(v[1:-3])
    layer, level = v.split("_")
    return int(layer[1:]), int(level[1:])


@pytest.mark.parametrize("lo,hi,layers", [(3, 7, 5), (3, 7, 1), (3, 7, 9), (3, 8, 6), (2, 7, 17), (3, 4, 4)])
def test_every_node_follows_log2n_link_and_queen_fusion(lo, hi, layers):
    g = build_graph(gfpn(lo, hi, layers))
    assert sum(1 for v in g if not is_input(g, v)) == layers * (hi - lo + 1)
    for v in g:
        if is_input(g, v):
            continue
        layer, k = _where(v)
        srcs = {_where(s) for s in inputs_of(g, v)}
        same = {src for src, lvl in srcs if lvl == k}
        # log2(n)-link: every l - 2^j that is >= 0, nothing else, so at most log2(l) + 1 layers
        assert same == {layer - 2**j for j in range(8) if layer - 2**j >= 0}, v
        assert len(same) <= layer.bit_length()  # = floor(log2 l) + 1
        # queen-fusion: the previous layer's diagonals and the own layer's path neighbour
        path = k + 1 if layer % 2 == 1 else k - 1
        other = {(layer - 1, k - 1), (layer - 1, k + 1), (layer, path)}
        assert srcs - {(s, k) for s in same} == {(s, lvl) for s, lvl in other if lo <= lvl <= hi}, v
    assert g.graph["outputs"] == {k: f"L{layers}_P{k}" for k in range(lo, hi + 1)}


def test_counts_on_p3_p8():
    # 6 levels, 5 layers: 30 nodes; links 6 x (1+2+2+3+3) = 66, diagonals 5 x 2 x 5 = 50,
    # own-path 5 x 5 = 25: 141 edges
    g = build_graph(generate("gfpn", 3, 8))
    assert (sum(1 for v in g if not is_input(g, v)), g.number_of_edges()) == (30, 141)


def test_edg_new_gfpn_any_levels(edg, tmp_path):
    out = tmp_path / "g.yaml"
    assert edg("new", "gfpn", "--levels", "3-8", "-o", out)[0] == 0
    code, text, _ = edg("validate", out)
    assert code == 0 and "30 nodes, 141 edges" in text


def test_forward_at_64_px_on_random_features():
    torch.manual_seed(0)
    m = compile_graph(load_graph("gfpn"), 16, {3: 8, 4: 12, 5: 16, 6: 16, 7: 16}).eval()
    sizes = {3: 8, 4: 4, 5: 2, 6: 1, 7: 1}  # 64 px halved per level, rounding up
    feats = [torch.randn(2, c, sizes[k], sizes[k]) for k, c in zip(range(3, 8), (8, 12, 16, 16, 16))]
    with torch.no_grad():
        outs = m(*feats)
    assert [tuple(o.shape) for o in outs] == [(2, 16, sizes[k], sizes[k]) for k in range(3, 8)]
    assert all(torch.isfinite(o).all() for o in outs)
    # P3's features reach every output level (information crosses the whole pyramid)
    feats[0] = feats[0] + 1.0
    with torch.no_grad():
        changed = m(*feats)
    assert all(not torch.equal(a, b) for a, b in zip(outs, changed))
