"""Fusion and resample ops against the known values of the paper's fusion formulas (§3.3; docs/reference.md) and hand computations."""

import pytest
import torch
import torch.nn.functional as F

from efficientdet_graph import RegistryError
from efficientdet_graph.ops import ACTIVATIONS, DOWNSAMPLERS, FUSIONS, NODE_OPS, UPSAMPLERS, CompileOptions
from efficientdet_graph.spec.vocab import VOCABULARY

OPTS = CompileOptions()
ONE, TWO = torch.ones(1, 4, 3, 3), 2 * torch.ones(1, 4, 3, 3)


def test_sum_known_value():
    assert torch.equal(FUSIONS.get("sum")(2, 4, OPTS)(ONE, TWO), torch.full_like(ONE, 3.0))


@pytest.mark.parametrize("name", ["fast_normalized", "channel_fast_normalized"])
def test_fast_normalized_known_value(name):
    out = FUSIONS.get(name)(2, 4, OPTS)(ONE, TWO)
    assert torch.allclose(out, torch.full_like(ONE, 1.5 * (2 / (2 + 1e-4))), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "channel_softmax"])
def test_softmax_known_value(name):
    assert torch.allclose(FUSIONS.get(name)(2, 4, OPTS)(ONE, TWO), torch.full_like(ONE, 1.5))


def test_fast_normalized_ignores_negative_weights():
    fuse = FUSIONS.get("fast_normalized")(2, 4, OPTS)
    with torch.no_grad():
        fuse.weights[0].fill_(-3.0)
        fuse.weights[1].fill_(0.5)
    assert torch.allclose(fuse(ONE, TWO), TWO * 0.5 / (0.5 + 1e-4))


def test_weights_are_one_scalar_parameter_per_edge():
    fuse = FUSIONS.get("fast_normalized")(3, 8, OPTS)
    assert [tuple(p.shape) for p in fuse.parameters()] == [(), (), ()]
    fuse = FUSIONS.get("channel_fast_normalized")(3, 8, OPTS)
    assert [tuple(p.shape) for p in fuse.parameters()] == [(1, 8, 1, 1)] * 3


def test_gp_fusion_formula():
    a, b = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    want = b + torch.sigmoid(b.mean(dim=(2, 3), keepdim=True)) * a
    assert torch.allclose(FUSIONS.get("gp")(2, 4, OPTS)(a, b), want)


def test_concat_fusion_shape():
    out = FUSIONS.get("concat")(3, 4, OPTS)(ONE, TWO, ONE)
    assert out.shape == ONE.shape


def tf_same_maxpool(x):
    """TF 'SAME' 3x3/2 max pool, written from TF's padding rule."""
    h, w = x.shape[-2:]
    oh, ow = -(-h // 2), -(-w // 2)
    ph, pw = max((oh - 1) * 2 + 3 - h, 0), max((ow - 1) * 2 + 3 - w, 0)
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
    return F.max_pool2d(x, 3, 2)


@pytest.mark.parametrize("size", [8, 7, 5, 1, 2])
def test_max_pool_same(size):
    x = torch.randn(1, 2, size, size + 1)
    got = DOWNSAMPLERS.get("max_pool")(2, OPTS)(x)
    assert torch.equal(got, tf_same_maxpool(x))
    assert got.shape[-2:] == ((size - 1) // 2 + 1, (size + 1 - 1) // 2 + 1)


@pytest.mark.parametrize("size", [8, 7])
def test_symmetric_padding_matches_torch(size):
    x = torch.randn(1, 2, size, size)
    sym = CompileOptions(padding="symmetric")
    assert torch.equal(DOWNSAMPLERS.get("max_pool")(2, sym)(x), F.max_pool2d(x, 3, 2, 1))
    assert torch.allclose(DOWNSAMPLERS.get("avg_pool")(2, sym)(x), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))


def test_avg_pool_same_counts_only_real_pixels():
    x = torch.ones(1, 1, 6, 6)
    assert torch.allclose(DOWNSAMPLERS.get("avg_pool")(1, OPTS)(x), torch.ones(1, 1, 3, 3))


def test_upsample_to_reference_size():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    up = UPSAMPLERS.get("nearest")(OPTS)
    assert up(x, torch.empty(1, 1, 6, 6)).shape[-2:] == (6, 6)
    assert up(x, torch.empty(1, 1, 5, 5)).shape[-2:] == (5, 5)
    assert torch.equal(up(x, torch.empty(1, 1, 6, 6)), x.repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_sep_conv_order():
    op = NODE_OPS.get("sep_conv")(4, ACTIVATIONS.get("swish")(), OPTS).eval()
    x = torch.randn(1, 4, 5, 5)
    want = F.silu(x)
    want = F.conv2d(want, op.dw.weight, padding=1, groups=4)
    want = F.conv2d(want, op.pw.weight)
    want = F.batch_norm(want, op.bn.running_mean, op.bn.running_var, op.bn.weight, op.bn.bias, False, 0.0, 1e-3)
    assert torch.allclose(op(x), want, atol=1e-6)
    assert op.bn.eps == 1e-3 and op.bn.momentum == 0.01


@pytest.mark.parametrize("registry", [FUSIONS, NODE_OPS, ACTIVATIONS, DOWNSAMPLERS, UPSAMPLERS])
def test_every_spec_name_has_a_module(registry):
    assert set(registry.names()) == VOCABULARY[registry.kind]


def test_registry_error_is_helpful():
    with pytest.raises(RegistryError) as e:
        FUSIONS.get("fast_normalised")
    assert "did you mean 'fast_normalized'" in str(e.value) and "softmax" in str(e.value)


def test_registering_a_fusion_makes_it_valid_in_specs(write):
    from efficientdet_graph import load_graph
    from efficientdet_graph.ops import Registry

    class Max(torch.nn.Module):
        def forward(self, *xs):
            return torch.stack(xs).amax(0)

    name = "elementwise_max_test"
    if name not in FUSIONS:
        FUSIONS.register(name)(lambda n, c, opts: Max())
    path = write(
        f"""
        name: custom
        levels: [3, 4]
        defaults: {{fusion: {name}}}
        nodes:
          - {{id: A, level: 3, inputs: [P3_in, P4_in]}}
          - {{id: B, level: 4, inputs: [P4_in, A]}}
        outputs: {{3: A, 4: B}}
        """
    )
    from efficientdet_graph.compile import compile_graph

    m = compile_graph(load_graph(path), 4)
    assert isinstance(m.A.fuse, Max)
    assert isinstance(Registry("fusion"), Registry)
