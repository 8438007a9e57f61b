"""Drawings place nodes by depth: every edge runs left to right (or, for BiFPN's chained
outputs in the paper's shared last column, straight up or down between adjacent levels)."""

import pytest

from efficientdet_graph import load_graph, unroll
from efficientdet_graph.spec.builtin import builtin_names
from efficientdet_graph.viz import draw, layout


@pytest.mark.parametrize("name", builtin_names("graphs"))
def test_edges_run_left_to_right(name):
    g = load_graph(name)
    pos, _ = layout(g)
    u = unroll(g)
    for s, d in u.edges:
        (x0, y0), (x1, y1) = pos[s], pos[d]
        assert x1 > x0 or (x1 == x0 and abs(y1 - y0) == 1), f"{name}: {s} -> {d} runs from x={x0} to x={x1}"


def test_nasfpn_is_not_forced_into_one_column(tmp_path):
    g = load_graph("nasfpn")
    pos, _ = layout(g)
    outs = list(g.graph["outputs"].values())
    assert len({pos[v][0] for v in outs}) > 1
    assert draw(g, tmp_path / "nasfpn.png").stat().st_size > 1000
