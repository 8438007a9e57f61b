"""Level gaps: a graph names its input levels (``inputs: [3, 5]``) and may give outputs at
other levels than its inputs. Compiled modules take only the declared inputs; levels
without one get the image's size. Checked against hand-written F.* forwards, the
model's input adapter, fvcore, and the spec's own rules (located errors, round trip,
passes)."""

import pytest
import torch
import torch.nn.functional as F

from efficientdet_graph import ConfigError, SpecError, load_graph
from efficientdet_graph.compile import compile_graph, output_shapes
from efficientdet_graph.compile.export import example_inputs, export_program
from efficientdet_graph.graph import graph_to_yaml, input_levels, output_levels, same_structure
from efficientdet_graph.model.adapter import InputAdapter
from efficientdet_graph.ops import CompileOptions
from efficientdet_graph.passes import run_pass, run_passes
from efficientdet_graph.profile import fvcore_flops, graph_cost

from test_compile import randomize
from test_errors import problems as located  # (line, column, message) of a spec's SpecError

# P4 is made inside from P3 (down) and P5 (up): no P4 tensor is given.
GAP = """\
name: gap35
levels: [3, 5]
inputs: [3, 5]
nodes:
  - {id: P4_mid, level: 4, inputs: [P3_in, P5_in]}
  - {id: P5_out, level: 5, inputs: [P5_in, P4_mid]}
  - {id: P4_out, level: 4, inputs: [P4_mid, P5_out]}
  - {id: P3_out, level: 3, inputs: [P3_in, P4_out]}
outputs: {3: P3_out, 4: P4_out, 5: P5_out}
"""

# EfficientDet's input adapter (1x1 conv + BN where channels differ, then a 3x3/2
# max-pool per level) written as a graph: P3-P5 in, P3-P7 out.
ADAPTER = """\
name: adapter_graph
levels: [3, 7]
inputs: [3, 4, 5]
defaults: {op: identity}
nodes:
  - {id: P6_out, level: 6, inputs: [P5_in]}
  - {id: P7_out, level: 7, inputs: [P6_out]}
outputs: {3: P3_in, 4: P4_in, 5: P5_in, 6: P6_out, 7: P7_out}
"""

# The adapter, then a top-down pass over all five levels that goes up from the made
# P7 and P6 to levels without an input.
ADAPTER_TD = """\
name: adapter_td
levels: [3, 7]
inputs: [3, 4, 5]
nodes:
  - {id: P6_made, level: 6, inputs: [P5_in], op: identity}
  - {id: P7_out, level: 7, inputs: [P6_made], op: identity}
  - {id: P6_out, level: 6, inputs: [P6_made, P7_out]}
  - {id: P5_out, level: 5, inputs: [P5_in, P6_out]}
  - {id: P4_out, level: 4, inputs: [P4_in, P5_out]}
  - {id: P3_out, level: 3, inputs: [P3_in, P4_out]}
outputs: {3: P3_out, 4: P4_out, 5: P5_out, 6: P6_out, 7: P7_out}
"""

C = 8


def half(s: int) -> int:
    """The official pyramid rule: a level is the one below halved, rounding up."""
    return -(-s // 2)


def size_at(image: int, level: int) -> int:
    for _ in range(level):
        image = half(image)
    return image


def feats(image: int, cin: dict[int, int], batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size_at(image, k), size_at(image, k), generator=gen) for k, c in cin.items()]


class Ref:
    """A hand-written forward over a compiled module's weights (TF SAME max-pool,
    nearest interpolation to the image's size, fast-normalized fusion, separable conv)."""

    def __init__(self, m: torch.nn.Module, image: int):
        self.m, self.image = m, image

    def bn(self, name, x):
        b = self.m.get_submodule(name)
        return F.batch_norm(x, b.running_mean, b.running_var, b.weight, b.bias, False, 0.0, b.eps)

    def adapt(self, prefix, x):
        if x.shape[1] == C:
            return x
        return self.bn(f"{prefix}.bn", F.conv2d(x, self.m.get_parameter(f"{prefix}.conv.weight")))

    @staticmethod
    def down(x):
        # TensorFlow's SAME padding for a 3x3/2 window: total max(0, (out - 1) * 2 + 3 - in), the extra one after
        pads = []
        for s in (x.shape[-1], x.shape[-2]):
            total = max(0, (half(s) - 1) * 2 + 3 - s)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)

    def up(self, x, level):
        s = size_at(self.image, level)
        return F.interpolate(x, size=(s, s), mode="nearest")

    def node(self, name, xs):
        prm = self.m.get_parameter
        w = [torch.relu(prm(f"{name}.fuse.weights.{i}")) for i in range(len(xs))]
        x = F.silu(sum(wi * xi for wi, xi in zip(w, xs)) / (sum(w) + 1e-4))
        x = F.conv2d(x, prm(f"{name}.op.dw.weight"), padding=1, groups=C)
        return self.bn(f"{name}.op.bn", F.conv2d(x, prm(f"{name}.op.pw.weight")))


def reference_gap(m, p3, p5, image):
    r = Ref(m, image)
    p4_mid = r.node("P4_mid", [r.down(r.adapt("P4_mid.edges.P3_in.0", p3)),
                               r.up(r.adapt("P4_mid.edges.P5_in.adapter", p5), 4)])
    p5_out = r.node("P5_out", [r.adapt("P5_out.edges.P5_in", p5), r.down(p4_mid)])
    p4_out = r.node("P4_out", [p4_mid, r.up(p5_out, 4)])
    p3_out = r.node("P3_out", [r.adapt("P3_out.edges.P3_in", p3), r.up(p4_out, 3)])
    return p3_out, p4_out, p5_out


def reference_adapter(m, p3, p4, p5, image):
    r = Ref(m, image)
    p6 = r.down(r.adapt("P6_out.edges.P5_in.0", p5))
    p7 = r.down(p6)
    return p3, p4, r.adapt("out_adapters.P5", p5), p6, p7


def reference_adapter_td(m, p3, p4, p5, image):
    r = Ref(m, image)
    p6_made = r.down(r.adapt("P6_made.edges.P5_in.0", p5))
    p7 = r.down(p6_made)
    p6 = r.node("P6_out", [p6_made, r.up(p7, 6)])
    p5_out = r.node("P5_out", [r.adapt("P5_out.edges.P5_in", p5), r.up(p6, 5)])
    p4_out = r.node("P4_out", [r.adapt("P4_out.edges.P4_in", p4), r.up(p5_out, 4)])
    p3_out = r.node("P3_out", [r.adapt("P3_out.edges.P3_in", p3), r.up(p4_out, 3)])
    return p3_out, p4_out, p5_out, p6, p7


def check_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert (g - w).abs().max() <= 1e-5


@pytest.fixture
def gap(write):
    return load_graph(write(GAP, "gap.yaml"))


@pytest.fixture
def adapter(write):
    return load_graph(write(ADAPTER, "adapter.yaml"))


@pytest.fixture
def adapter_td(write):
    return load_graph(write(ADAPTER_TD, "adapter_td.yaml"))


# ---------------------------------------------------------------- (a) inputs P3/P5


def test_gap_graph_levels(gap):
    assert input_levels(gap) == (3, 5) and output_levels(gap) == (3, 4, 5)
    assert "P4_in" not in gap


@pytest.mark.parametrize("image", [128, 100])
def test_gap_graph_forward_takes_p3_p5_and_equals_reference(gap, image):
    m = randomize(compile_graph(gap, C, {3: 6, 5: 10}))
    assert "def forward(self, P3_in, P5_in)" in m.code
    p3, p5 = feats(image, {3: 6, 5: 10})
    with torch.no_grad():
        got, want = m(p3, p5), reference_gap(m, p3, p5, image)
    check_close(got, want)
    assert [tuple(t.shape[1:]) for t in got] == list(output_shapes(gap, C, image).values())


def test_gap_graph_exports(gap):
    m = randomize(compile_graph(gap, C, {3: 6, 5: 10}))
    prog = export_program(m, 128)
    p3, p5 = feats(256, {3: 6, 5: 10}, batch=1)  # another size than the one traced
    with torch.no_grad():
        check_close(prog.module()(p3, p5), reference_gap(m, p3, p5, 256))


def test_cli_compile_prints_the_gap_signature(edg, write):
    code, out, err = edg("compile", write(GAP), "--print-code", "--input-size", "100", "--in-channels", "6,10")
    assert code == 0, err
    assert "def forward(self, P3_in, P5_in)" in out
    ins = out.split("(C, H, W):")[1]
    assert "P3_in: (6, 13, 13)" in ins and "P5_in: (10, 4, 4)" in ins and "P4_in" not in ins


# ---------------------------------------------------------------- (b) the adapter as a graph


@pytest.mark.parametrize("image", [128, 100])
def test_adapter_graph_equals_reference(adapter, image):
    cin = {3: C, 4: C, 5: 12}
    m = randomize(compile_graph(adapter, C, cin))
    assert "def forward(self, P3_in, P4_in, P5_in)" in m.code
    p3, p4, p5 = feats(image, cin)
    with torch.no_grad():
        check_close(m(p3, p4, p5), reference_adapter(m, p3, p4, p5, image))


@pytest.mark.parametrize("image", [128, 100])
def test_adapter_graph_equals_the_models_input_adapter(adapter, image):
    """P6 and P7 from the graph and from ``model.adapter.InputAdapter`` on the same weights."""
    cin = {3: C, 4: C, 5: 12}
    m = randomize(compile_graph(adapter, C, cin))
    theirs = InputAdapter(12, [6, 7], C, CompileOptions()).eval()
    sd = {k.removeprefix("P6_out.edges.P5_in.").replace("0.", "P6.0.", 1): v
          for k, v in m.state_dict().items() if k.startswith("P6_out.edges.P5_in.")}
    theirs.load_state_dict(sd)  # strict: every weight of the adapter has its counterpart
    p3, p4, p5 = feats(image, cin)
    with torch.no_grad():
        got, want = m(p3, p4, p5), theirs([p3, p4, p5])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    check_close(got[3:], want[3:])


@pytest.mark.parametrize("image", [128, 100])
def test_adapter_then_top_down_equals_reference(adapter_td, image):
    """Edges going up to P6, a level with no input: its size is the image's, not P7's doubled."""
    cin = {3: 6, 4: 7, 5: 12}
    m = randomize(compile_graph(adapter_td, C, cin))
    p3, p4, p5 = feats(image, cin)
    with torch.no_grad():
        check_close(m(p3, p4, p5), reference_adapter_td(m, p3, p4, p5, image))


def test_adapter_graph_onnx_matches_torch(adapter_td, tmp_path):
    pytest.importorskip("onnxruntime")
    from efficientdet_graph.compile.export import check_onnx, export_onnx

    m = randomize(compile_graph(adapter_td, C, {3: 6, 4: 7, 5: 12}))
    path = export_onnx(m, tmp_path / "a.onnx", 128)
    import onnx

    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["P3_in", "P4_in", "P5_in"]
    assert [o.name for o in model.graph.output] == [f"P{k}_out" for k in range(3, 8)]
    assert check_onnx(m, path, 256) <= 1e-4


# ---------------------------------------------------------------- (c) located errors


def test_input_level_outside_levels(write):
    (p,) = located(write, GAP.replace("inputs: [3, 5]", "inputs: [3, 9]"))
    assert p[:2] == (3, 13) and "input level 9 is outside levels [3, 5]" in p[2] and "did you mean 5" in p[2]


def test_input_level_repeated(write):
    (p,) = located(write, GAP.replace("inputs: [3, 5]", "inputs: [3, 5, 5]"))
    assert p[:2] == (3, 16) and "input level 5 is listed twice" in p[2]


def test_inputs_not_ascending(write):
    (p,) = located(write, GAP.replace("inputs: [3, 5]", "inputs: [5, 3]"))
    assert p[:2] == (3, 13) and "ascending" in p[2] and "[3, 5]" in p[2]


def test_inputs_empty(write):
    (p,) = located(write, GAP.replace("inputs: [3, 5]", "inputs: []"))
    assert p[:2] == (3, 9) and "at least one level" in p[2]


def test_repeat_needs_outputs_at_the_input_levels(write):
    (p,) = located(write, ADAPTER + "repeat: 2\n")
    assert p[:2] == (9, 9) and "repeat: 2" in p[2] and "[3, 4, 5, 6, 7]" in p[2] and "[3, 4, 5]" in p[2]


def test_derived_repeat_needs_outputs_at_the_input_levels(write):
    write(ADAPTER, "adapter.yaml")
    (p,) = located(write, "name: d\nderive: {from: adapter.yaml}\nrepeat: 3\n")
    assert p[:2] == (3, 9) and "repeat: 3" in p[2]


def test_repeat_pass_refuses_outputs_other_than_inputs(adapter):
    from efficientdet_graph.errors import PassError

    with pytest.raises(PassError, match="output levels"):
        run_pass(adapter, "repeat", {"n": 2})


def test_output_level_with_no_node(write):
    (p,) = located(write, GAP.replace("{3: P3_out,", "{3: P3_outt,"))
    assert p[:2] == (9, 14) and "unknown node 'P3_outt'" in p[2] and "did you mean 'P3_out'" in p[2]


def test_output_at_another_level(write):
    p, q = located(write, GAP.replace("4: P4_out", "4: P5_out").replace("5: P5_out", "5: P4_out"))
    assert q[:2] == (9, 36) and "output P5 is node 'P4_out', which is at level 4" in q[2]
    assert p[:2] == (9, 25) and "output P4 is node 'P5_out', which is at level 5" in p[2]


def test_edge_from_a_level_without_input(write):
    (p,) = located(write, GAP.replace("[P4_mid, P5_out]", "[P4_in, P4_mid, P5_out]"))
    assert p[:2] == (7, 37) and "'P4_in' is not a graph input" in p[2] and "[3, 5]" in p[2]


def test_node_below_the_lowest_input(write):
    text = GAP.replace("levels: [3, 5]", "levels: [2, 5]").replace(
        "outputs:", "  - {id: P2_out, level: 2, inputs: [P3_out]}\noutputs:").replace("{3:", "{2: P2_out, 3:")
    found = located(write, text)
    assert [(line, col) for line, col, _ in found] == [(9, 25)]
    assert "below the lowest input P3_in" in found[0][2]


def test_node_spelled_like_an_input(write):
    (p,) = located(write, GAP.replace("P4_mid", "P4_in"))
    assert p[:2] == (5, 10) and "spelled like a graph input" in p[2]


def test_cli_exits_2_on_a_gap_error(edg, write):
    code, _, err = edg("validate", write(GAP.replace("inputs: [3, 5]", "inputs: [3, 9]")))
    assert code == 2 and ":3:13:" in err and "Traceback" not in err


def test_without_inputs_every_level_still_needs_an_output(write):
    text = GAP.replace("inputs: [3, 5]\n", "").replace("[P3_in, P5_in]", "[P3_in, P4_in, P5_in]")
    (p,) = located(write, text.replace("4: P4_out, ", ""))
    assert p[:2] == (8, 1) and "no output for level(s) P4" in p[2]
    load_graph(write(GAP.replace("4: P4_out, ", ""), "gap_no_p4.yaml"))  # with 'inputs', any output levels


# ---------------------------------------------------------------- (d) round trip


@pytest.mark.parametrize("text", [GAP, ADAPTER, ADAPTER_TD])
def test_round_trip_is_a_fixed_point(write, text):
    g = load_graph(write(text))
    y = graph_to_yaml(g)
    assert "inputs: [" in y
    g2 = load_graph(write(y, "again.yaml"))
    assert input_levels(g2) == input_levels(g) and g2.graph["outputs"] == g.graph["outputs"]
    assert same_structure(g, g2, ops=True) and graph_to_yaml(g2) == y


def test_every_level_exports_without_inputs():
    assert "\ninputs:" not in graph_to_yaml(load_graph("bifpn"))


def test_gaps_count_in_the_structure(write):
    full = GAP.replace("inputs: [3, 5]\n", "").replace("[P3_in, P5_in]", "[P3_in, P4_in, P5_in]")
    a, b = load_graph(write(GAP)), load_graph(write(full, "full.yaml"))
    assert not same_structure(a, b)


# ---------------------------------------------------------------- (e) counting


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("which,cin", [("gap", {3: 6, 5: 10}), ("adapter", {3: C, 4: C, 5: 12}),
                                       ("adapter_td", {3: 6, 4: 7, 5: 12})])
@pytest.mark.parametrize("image", [128, 100])
def test_analytic_counter_equals_fvcore(request, which, cin, image):
    g = request.getfixturevalue(which)
    m = compile_graph(g, C, cin).eval()
    want_flops, _ = fvcore_flops(m, example_inputs(m, image))
    cost = graph_cost(g, C, cin, image)
    assert cost.params == sum(p.numel() for p in m.parameters())
    assert cost.flops == want_flops


# ---------------------------------------------------------------- (f) passes


PASSES = [["prune_single_input"], ["add_same_level_skips"], ["remove_dead_nodes"], ["expand_repeat"],
          ["prune_single_input", "add_same_level_skips"]]


@pytest.mark.parametrize("calls", PASSES)
@pytest.mark.parametrize("text", [GAP, ADAPTER, ADAPTER_TD])
def test_passes_give_valid_gap_graphs(write, text, calls):
    g = load_graph(write(text))
    out, _ = run_passes(g, calls)
    assert input_levels(out) == input_levels(g) and output_levels(out) == output_levels(g)
    # valid: the written graph loads back through every check, and compiles and runs
    again = load_graph(write(graph_to_yaml(out), "after.yaml"))
    assert same_structure(out, again, ops=True)
    cin = {k: C for k in input_levels(g)}
    m = compile_graph(again, C, cin).eval()
    with torch.no_grad():
        outs = m(*example_inputs(m, 100))
    assert [tuple(t.shape[1:]) for t in outs] == list(output_shapes(again, C, 100).values())


def test_same_level_skips_only_where_an_input_exists(gap, adapter_td):
    out, _ = run_pass(gap, "add_same_level_skips")
    added = set(out.edges) - set(gap.edges)
    assert added == {("P5_in", "P5_out")} or added == set()  # P5_out already takes P5_in
    assert not any(s == "P4_in" for s, _ in out.edges)
    out, report = run_pass(adapter_td, "add_same_level_skips")
    assert not any(s in ("P6_in", "P7_in") for s, _ in out.edges)
    assert "P6_in" not in out and "P7_in" not in out


def test_prune_keeps_made_levels(adapter):
    out, _ = run_pass(adapter, "prune_single_input")
    # P6 and P7 have one input each, at another level: they stay, being outputs
    assert out.graph["outputs"][6] == "P6_out" and out.graph["outputs"][7] == "P7_out"


def test_repeat_of_a_gap_graph_with_outputs_at_its_inputs(write):
    text = GAP.replace("outputs: {3: P3_out, 4: P4_out, 5: P5_out}", "outputs: {3: P3_out, 5: P5_out}")
    text = text.replace("  - {id: P4_out, level: 4, inputs: [P4_mid, P5_out]}\n", "").replace(
        "[P3_in, P4_out]", "[P3_in, P4_mid]")
    g = load_graph(write(text))
    out, _ = run_pass(g, "repeat", {"n": 3})
    assert input_levels(out) == (3, 5) and set(out.graph["outputs"]) == {3, 5}
    m = compile_graph(out, C).eval()
    assert "def forward(self, P3_in, P5_in)" in m.code
    with torch.no_grad():
        assert len(m(*example_inputs(m, 100))) == 2


# ---------------------------------------------------------------- necks and detectors


def test_neck_takes_a_p3_p5_graph(gap):
    from collections import OrderedDict

    from efficientdet_graph.model import neck

    n = neck(gap, [6, 10], C).eval()
    randomize(n.fpn)
    p3, p5 = feats(100, {3: 6, 5: 10})
    with torch.no_grad():
        out = n(OrderedDict([("a", p3), ("b", p5)]))
        want = reference_gap(n.fpn, p3, p5, 100)
    assert list(out) == ["a", "p4", "b"]  # the made level is named as torchvision names extra levels
    check_close(list(out.values()), want)


def test_neck_of_the_adapter_graph_has_torchvisions_p6_p7_contract(adapter_td):
    """Keys and shapes as torchvision's own FPN + LastLevelP6P7 give them for the same maps."""
    from collections import OrderedDict

    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from efficientdet_graph.model import neck

    cin = {3: 6, 4: 7, 5: 12}
    x = OrderedDict(zip(["0", "1", "2"], feats(100, cin)))
    theirs = FeaturePyramidNetwork(list(cin.values()), C, extra_blocks=LastLevelP6P7(C, C)).eval()
    ours = neck(adapter_td, list(cin.values()), C).eval()
    with torch.no_grad():
        a, b = theirs(x), ours(x)
    assert list(a) == list(b) == ["0", "1", "2", "p6", "p7"]
    assert [t.shape for t in a.values()] == [t.shape for t in b.values()]


def test_neck_refuses_maps_that_cannot_fill_a_gap(gap):
    from efficientdet_graph.model import neck

    with pytest.raises(ConfigError, match="right above P3"):
        neck(gap, [6], C)


def test_detector_refuses_a_graph_without_every_level(write):
    from efficientdet_graph.model import create_model

    write(ADAPTER_TD, "adapter_td.yaml")
    path = write("name: gapdet\ngraph: adapter_td.yaml\nnum_classes: 2\nfpn_channels: 16\n", "det.yaml")
    with pytest.raises(SpecError) as e:
        create_model(path)
    (p,) = e.value.problems
    assert (p.file, p.line, p.column) == (str(path), 2, 8)
    assert "takes inputs [3, 4, 5] and gives outputs [3, 4, 5, 6, 7]" in p.message and "neck" in p.message
