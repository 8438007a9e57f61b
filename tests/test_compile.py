"""Compiled graphs: equal to a hand-written reference, every built-in runs, shapes before tensors."""

import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from efficientdet_graph import GraphSpec, build_graph, load_graph
from efficientdet_graph.compile import ShapeError, compile_graph, infer_shapes, level_size, output_shapes
from efficientdet_graph.compile.export import example_inputs
from efficientdet_graph.ops import CompileOptions
from efficientdet_graph.spec.builtin import builtin_names

from test_properties import dag_specs

B0 = {3: 40, 4: 112, 5: 320}  # EfficientNet-B0 channels at P3-P5 (timm feature_info; docs/reference.md)


def randomize(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights and BN statistics, so a wrong wiring cannot pass by luck."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.2 if "fuse.weights" in name else torch.randn(p.shape, generator=gen) * 0.3)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
    return m.eval()


def reference_bifpn(m, feats, C):
    """One BiFPN layer written out by hand from the paper (§3.3, Fig. 2d; docs/reference.md)."""
    P = dict(zip(range(3, 8), feats))
    prm = m.get_parameter

    def bn(name, x):
        b = m.get_submodule(name)
        return F.batch_norm(x, b.running_mean, b.running_var, b.weight, b.bias, False, 0.0, 1e-3)

    def adapt(node, src, x):  # 1x1 conv + BN where channels differ
        if x.shape[1] == C:
            return x
        return bn(f"{node}.edges.{src}.bn", F.conv2d(x, prm(f"{node}.edges.{src}.conv.weight")))

    def down(x):  # TF SAME 3x3/2 max-pool; sizes here are even, so pad one at the end
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2)

    def up(x):
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def node(name, xs):
        w = [torch.relu(prm(f"{name}.fuse.weights.{i}")) for i in range(len(xs))]
        fused = sum(wi * xi for wi, xi in zip(w, xs)) / (sum(w) + 1e-4)
        x = F.silu(fused)
        x = F.conv2d(x, prm(f"{name}.op.dw.weight"), padding=1, groups=C)
        x = F.conv2d(x, prm(f"{name}.op.pw.weight"))
        return bn(f"{name}.op.bn", x)

    p6_td = node("P6_td", [P[6], up(P[7])])
    p5_td = node("P5_td", [adapt("P5_td", "P5_in", P[5]), up(p6_td)])
    p4_td = node("P4_td", [adapt("P4_td", "P4_in", P[4]), up(p5_td)])
    p3 = node("P3_out", [adapt("P3_out", "P3_in", P[3]), up(p4_td)])
    p4 = node("P4_out", [adapt("P4_out", "P4_in", P[4]), p4_td, down(p3)])
    p5 = node("P5_out", [adapt("P5_out", "P5_in", P[5]), p5_td, down(p4)])
    p6 = node("P6_out", [P[6], p6_td, down(p5)])
    p7 = node("P7_out", [P[7], down(p6)])
    return p3, p4, p5, p6, p7


@pytest.fixture(scope="module")
def bifpn_module():
    return randomize(compile_graph(load_graph("bifpn"), 16, B0))


def test_bifpn_equals_reference_forward(bifpn_module):
    feats = example_inputs(bifpn_module, 256, batch=2)
    with torch.no_grad():
        got, want = bifpn_module(*feats), reference_bifpn(bifpn_module, feats, 16)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert (g - w).abs().max() <= 1e-5


def test_first_layer_has_two_adapters_for_p4_and_p5(bifpn_module):
    names = {n for n, _ in bifpn_module.named_parameters()}
    for level in (4, 5):
        assert f"P{level}_td.edges.P{level}_in.conv.weight" in names
        assert f"P{level}_out.edges.P{level}_in.conv.weight" in names
    assert not any(n.startswith("P6_out.edges.P6_in") for n in names)  # P6 already has 16 channels


def test_torch_compile_fullgraph_equals_reference(bifpn_module):
    feats = example_inputs(bifpn_module, 128)
    compiled = torch.compile(bifpn_module, fullgraph=True)  # fullgraph: any graph break raises
    with torch.no_grad():
        got, want = compiled(*feats), reference_bifpn(bifpn_module, feats, 16)
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= 1e-5


def test_generated_code_is_straight_line(bifpn_module):
    code = bifpn_module.code
    assert "def forward(self, P3_in, P4_in, P5_in, P6_in, P7_in)" in code
    for word in (" for ", " if ", " while "):
        assert word not in code
    assert "self.P6_td.fuse(P6_in, P6_td_from_P7_in)" in code


def test_parameter_names_follow_node_ids(bifpn_module):
    assert bifpn_module.get_parameter("P6_td.fuse.weights.1").shape == ()
    assert bifpn_module.get_parameter("P6_td.op.pw.weight").shape == (16, 16, 1, 1)


@pytest.mark.parametrize("name", builtin_names("graphs"))
@pytest.mark.parametrize("size", [128, 100])
def test_every_builtin_compiles_and_trains(name, size):
    g = load_graph(name)
    m = compile_graph(g, 8, {3: 12, 4: 16})
    feats = [f.requires_grad_() for f in example_inputs(m, size, batch=2)]
    outs = m(*feats)
    lo, hi = g.graph["levels"]
    declared = output_shapes(g, 8, size, {3: 12, 4: 16})
    assert [tuple(o.shape[1:]) for o in outs] == [declared[k] for k in range(lo, hi + 1)]
    sum(o.square().mean() for o in outs).backward()
    assert all(f.grad is not None for f in feats)
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("size", [512, 500, 333, 129])
def test_shapes_before_tensors(size):
    m = compile_graph("bifpn", 8)
    shapes = infer_shapes(load_graph("bifpn"), 8, size)
    outs = m(*example_inputs(m, size))
    for k, o in zip(range(3, 8), outs):
        h = size
        for _ in range(k):
            h = (h - 1) // 2 + 1  # the official rule, written out
        assert o.shape[-2:] == (h, h) == shapes[f"P{k}_in"][1:] == level_size(size, k)


def test_bad_sizes_are_rejected_clearly():
    with pytest.raises(ShapeError):
        infer_shapes(load_graph("bifpn"), 8, 0)
    with pytest.raises(ShapeError, match="outside"):
        compile_graph("bifpn", 8, {2: 10})


def test_repeat_compiles_all_layers():
    g = load_graph("bifpn")
    g.graph["repeat"] = 3
    m = compile_graph(g, 8, B0)
    assert sum(1 for n in m.graph.nodes if n.op == "call_module" and n.target.endswith(".op")) == 24
    # only layer 1 sees backbone channels
    assert [n for n, _ in m.named_parameters() if ".edges.P5_in.conv" in n] == [
        "L1_P5_td.edges.P5_in.conv.weight", "L1_P5_out.edges.P5_in.conv.weight"]


def test_build_speed_is_reported_not_asserted():
    g = load_graph("bifpn")
    g.graph["repeat"] = 8
    t0 = time.perf_counter()
    m = compile_graph(g, 384, {3: 48, 4: 136, 5: 384})  # D6/D7 scale
    seconds = time.perf_counter() - t0
    print(f"8-layer BiFPN at 384 channels built in {seconds:.3f} s")
    assert len(list(m.parameters())) > 0


def test_autocast_and_channels_last():
    m = randomize(compile_graph("bifpn", 16, B0))
    feats = example_inputs(m, 128)
    with torch.no_grad():
        ref = m(*feats)
        m_cl = m.to(memory_format=torch.channels_last)
        out_cl = m_cl(*[f.to(memory_format=torch.channels_last) for f in feats])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf = m(*feats)
    for r, c, b in zip(ref, out_cl, out_bf):
        assert (r - c).abs().max() <= 1e-4
        assert b.dtype == torch.bfloat16 and (r - b.float()).abs().max() <= 0.1 * r.abs().max() + 0.05


def test_node_named_like_a_module_attribute(write):
    path = write(
        """
        name: clash
        levels: [3, 4]
        nodes:
          - {id: forward, level: 3, inputs: [P3_in, P4_in]}
          - {id: training, level: 4, inputs: [P4_in, forward]}
        outputs: {3: forward, 4: training}
        """
    )
    m = compile_graph(load_graph(path), 4)
    assert "n_forward.op.pw.weight" in dict(m.named_parameters())
    outs = m(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4))
    assert [o.shape[-1] for o in outs] == [8, 4]


def test_pruned_fpn_passes_an_input_through_with_the_right_width():
    from efficientdet_graph import prune_single_input

    g, _ = prune_single_input(load_graph("fpn"))
    m = compile_graph(g, 8, 5)
    outs = m(*example_inputs(m, 128, batch=2))
    assert all(o.shape[1] == 8 for o in outs)


@settings(max_examples=25, deadline=None)
@given(dag_specs())
def test_random_specs_compile(data):
    g = build_graph(GraphSpec.model_validate(data))
    m = compile_graph(g, 4, 3, CompileOptions(padding="symmetric"))
    outs = m(*example_inputs(m, 2 ** g.graph["levels"][1] + 3))
    lo, hi = g.graph["levels"]
    declared = output_shapes(g, 4, 2 ** hi + 3, 3)
    assert [tuple(o.shape[1:]) for o in outs] == [declared[k] for k in range(lo, hi + 1)]


def test_d0_bifpn_parameter_count_matches_effdet():
    """docs/reference.md: the PyTorch port (effdet)'s D0 BiFPN has 194,361 parameters. It holds the
    3-layer BiFPN at 64 channels on EfficientNet-B0 features (40/112/320) plus the
    P6 input adapter (1x1 conv 320->64 without bias + BN); P7 is a bare max-pool."""
    g = load_graph("bifpn")
    g.graph["repeat"] = 3
    m = compile_graph(g, 64, B0)
    p6_adapter = 320 * 64 + 2 * 64
    assert sum(p.numel() for p in m.parameters()) + p6_adapter == 194_361
