"""Training-free scores: each against a property of its published definition computed by
hand, then the CLI that judges them against a reference table."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from efficientdet_graph.errors import SearchError
from efficientdet_graph.graph import graph_to_yaml
from efficientdet_graph.passes import load_graph
from efficientdet_graph.search.zerocost import gaussian_entropy, synflow, zero_cost_score


def test_synflow_of_a_bias_free_linear_chain_is_depth_times_the_flow():
    """Synflow's conservation law (Tanaka et al. 2020, Thm. 2): for a network that is
    homogeneous of degree 1 in each layer's weights, sum(theta * dR/dtheta) over one layer
    equals R; a 3-layer bias-free linear chain on an all-ones input scores 3 R, with
    R = 1' |W3| |W2| |W1| 1 computed here in numpy."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    w = [np.abs(m.weight.detach().numpy().astype(np.float64)) for m in net]
    r = float(np.ones(2) @ w[2] @ w[1] @ w[0] @ np.ones(5))
    got = synflow(net, lambda: [net(torch.ones(1, 5, dtype=torch.float64))])
    assert got == pytest.approx(math.log(3 * r), rel=1e-9)


def test_gaussian_entropy_of_one_layer_is_half_log_fan_in():
    """With N(0, 1) weights and inputs, a linear layer of fan-in n has outputs of variance
    n: the score, log(std), is log(n) / 2 (up to sampling error)."""
    n = 64
    lin = nn.Linear(n, 32, bias=True)
    got = gaussian_entropy(lin, lambda gen: [lin(torch.randn(512, n, generator=gen, dtype=torch.float64))], draws=3)
    assert got == pytest.approx(0.5 * math.log(n), abs=0.03)
    assert lin.bias.abs().max() == 0  # biases zeroed, as the definition has it


@pytest.mark.parametrize("score", ["entropy", "synflow"])
def test_zero_cost_scores_are_deterministic_fast_and_order_depth(score):
    torch.set_num_threads(1)
    bifpn = load_graph("bifpn")
    a, seconds = zero_cost_score(score, bifpn, 2)
    b, _ = zero_cost_score(score, bifpn, 2)
    assert a == b and math.isfinite(a)
    assert seconds < 5  # "well under a second" is measured in the fidelity file; this only catches a blow-up
    # one more layer of the same graph adds paths and depth: both definitions grow with it
    assert zero_cost_score(score, bifpn, 3)[0] > a


def test_default_settings_are_the_reference_schedules_detector():
    """Scored at initialisation, a network must look as the reference table trains it."""
    from efficientdet_graph.search.reference import Schedule
    from efficientdet_graph.search.zerocost import ZeroCostSettings

    z, s = ZeroCostSettings(), Schedule()
    assert (z.backbone, z.image_size, z.channels, z.head_repeat, z.anchor_scale) == (
        s.backbone, s.image_size, s.channels, s.head_repeat, s.anchor_scale)
    assert z.num_classes == 10  # the multiscale task's classes (docs/tasks.md)


def test_unknown_zero_cost_score_names_the_known_ones():
    with pytest.raises(SearchError, match="entropy, synflow"):
        zero_cost_score("grasp", load_graph("fpn"))


def _table(tmp_path, with_graphs: bool = True):
    rows = []
    for i, name in enumerate(("nofusion", "fpn", "panet", "bifpn")):
        g = load_graph(name)
        rows.append({"network": name, "repeat": 2, "graph_yaml": graph_to_yaml(g) if with_graphs else None,
                     "fpn_flops": 1000 * (i + 1), "fpn_params": 10 * (4 - i),
                     "val": {"values": [0.1 * i, 0.1 * i + 0.01]}})
    doc = {"schedule": {"backbone": "tinynet_e", "image_size": 96, "channels": 16, "head_repeat": 1,
                        "anchor_scale": 1.5},
           "task": {"splits": {"train": {"classes": ["a", "b", "c"]}}}, "table": rows}
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(doc))
    return path


def test_fidelity_cli_scores_every_network_and_reports_seconds(tmp_path):
    ref = _table(tmp_path)
    out = tmp_path / "fid.json"
    run = subprocess.run([sys.executable, "-m", "efficientdet_graph", "search", "fidelity", str(ref), "--zero-cost",
                          "entropy", "--n-boot", "200", "--results", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode in (0, 1), run.stderr[-2000:]
    doc = json.loads(out.read_text())
    zc = doc["zero_cost"]
    assert sorted(zc["scores"]) == ["bifpn", "fpn", "nofusion", "panet"]
    assert zc["settings"]["image_size"] == 96 and zc["settings"]["num_classes"] == 3
    assert all(0 < s < 5 for s in zc["seconds"].values())
    assert doc["verdict"]["passed"] == (run.returncode == 0)
    assert "zero-cost entropy" in run.stdout


def test_fidelity_cli_on_a_table_without_graphs_says_how_to_fix_it(tmp_path):
    ref = _table(tmp_path, with_graphs=False)
    run = subprocess.run([sys.executable, "-m", "efficientdet_graph", "search", "fidelity", str(ref), "--zero-cost",
                          "synflow"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "no graph for" in run.stderr and "Traceback" not in run.stderr
