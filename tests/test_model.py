"""Detectors: counts against effdet and the official ones (docs/reference.md), the family against the official table, specs, checkpoints."""

import pytest
import torch

from efficientdet_graph import SpecError
from efficientdet_graph.model import CheckpointError, create_model, load_model, save_model
from efficientdet_graph.profile import OFFICIAL, count_flops, family_rows, fvcore_flops, profile_model


def n(module):
    return sum(p.numel() for p in module.parameters())


def test_d0_counts_match_the_pytorch_port():
    # effdet efficientdet_d0 (docs/reference.md): 3,877,763 parameters (backbone 3,595,388; BiFPN 194,361; class 69,162; box 18,852)
    m = create_model("efficientdet-d0")
    assert n(m) == 3_877_763
    assert n(m.backbone) == 3_595_388
    assert n(m.adapter) + n(m.fpn) == 194_361
    assert (n(m.class_net), n(m.box_net)) == (69_162, 18_852)


@pytest.fixture(scope="module")
def rows():
    return {r["model"]: r for r in family_rows()}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_family_within_one_percent_of_official(rows, name):
    r = rows[name]
    assert abs(r["params_diff_pct"]) < 1.0 and abs(r["flops_diff_pct"]) < 1.0
    if r["official_exact"]:
        # the only parameter difference is the TF code's conv bias before each BN
        assert r["params_with_tf_biases"] == r["official_params"]


def test_fast_counter_equals_fvcore_on_d0():
    m = create_model("efficientdet-d0").eval()
    x = torch.zeros(1, 3, 512, 512)
    ours = count_flops(m, (x,), "cpu")
    total, by_module = fvcore_flops(m, (x,))
    assert ours.total == total == 2_570_808_832
    for part in ("backbone", "adapter", "fpn", "class_net", "box_net"):
        assert ours.by_module[part] == by_module[part]


@pytest.mark.parametrize("name,size", [("efficientdet-d3", 256), ("efficientdet-d7x", 256)])
def test_fast_counter_agrees_with_fvcore(name, size):
    m = create_model(name).eval()
    x = torch.zeros(1, 3, size, size)
    with torch.device("meta"):
        meta = create_model(name).eval()
    fast = count_flops(meta, (torch.empty(1, 3, size, size, device="meta"),))
    total, _ = fvcore_flops(m, (x,))
    assert abs(fast.total - total) <= 0.01 * total


def test_profile_per_node():
    p = profile_model("efficientdet-d0")
    assert p.params == 3_877_763 and set(p.components) == {"backbone", "adapter", "fpn", "class_net", "box_net"}
    assert "L1_P6_td" in p.nodes and len(p.nodes) == 24
    assert sum(v["params"] for v in p.nodes.values()) == p.components["fpn"]["params"]
    assert sum(v["flops"] for v in p.nodes.values()) == p.components["fpn"]["flops"]


def test_detect_returns_boxes_inside_the_image():
    torch.manual_seed(0)
    m = create_model("efficientdet-d0", num_classes=3, image_size=128).eval()
    out = m.detect(torch.rand(2, 3, 128, 96), score_threshold=0.0)
    assert len(out) == 2
    for d in out:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) <= 100
        assert (d["boxes"][:, 0::2] >= 0).all() and (d["boxes"][:, 0::2] <= 96).all()
        assert (d["labels"] < 3).all()


def test_any_graph_and_any_timm_backbone(write):
    path = write(
        """
        name: nasfpn-resnet
        graph: nasfpn
        phi: 0
        backbone: {name: resnet18}
        image_size: 256
        fpn_channels: 32
        num_classes: 5
        """
    )
    m = create_model(path)
    assert m.backbone.channels == {3: 128, 4: 256, 5: 512}
    cls, box = m(torch.rand(1, 3, 256, 256))
    assert [c.shape[1] for c in cls] == [9 * 5] * 5 and [tuple(b.shape[-2:]) for b in box][0] == (32, 32)


def test_model_spec_errors_are_located(write):
    path = write(
        """
        name: bad
        graph: bifpn
        backbone: {name: efficientnet_b9}
        fpn_chanels: 64
        fusion: fast_normalised
        """
    )
    with pytest.raises(SpecError) as e:
        create_model(path)
    assert [(p.line, p.column) for p in e.value.problems] == [(4, 1)]  # unknown key first
    path = write(
        """
        name: bad
        graph: bifpn
        backbone: {name: efficientnet_b9}
        fusion: fast_normalised
        """
    )
    with pytest.raises(SpecError) as e:
        create_model(path)
    assert e.value.problems[0].line == 4 and "fast_normalized" in e.value.problems[0].message
    path = write("name: bad\ngraph: bifpn\nbackbone: {name: efficientnet_b9}\n")
    with pytest.raises(SpecError) as e:
        create_model(path)
    assert e.value.problems[0].line == 3 and "efficientnet_b" in e.value.problems[0].message


def test_levels_must_match_the_graph(write):
    path = write("name: bad\ngraph: bifpn\nlevels: [3, 8]\n")
    with pytest.raises(SpecError, match="differ"):
        create_model(path)


def test_checkpoint_round_trip(tmp_path):
    m = create_model("efficientdet-d0", num_classes=4, fpn_channels=16, image_size=128).eval()
    path = save_model(m, tmp_path / "m.pt")
    again = load_model(path).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(m(x)[0], again(x)[0]):
            assert torch.equal(a, b)
    assert not list(tmp_path.glob(".m.pt.*"))  # no temporary file left behind


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model(bad)
    m = create_model("efficientdet-d0", fpn_channels=16)
    path = save_model(m, tmp_path / "m.pt")
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError):
        load_model(path)


def test_checkpoint_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "efficientdet-graph/1", "x": Evil()}, path)
    with pytest.raises(CheckpointError):
        load_model(path)


from efficientdet_graph.model import builtin_models  # noqa: E402


@pytest.mark.parametrize("name", builtin_models())
def test_every_builtin_model_spec_builds_and_counts(name):
    """Built on the meta device (no memory, no compute) and run through the counter."""
    p = profile_model(name, image_size=128)
    assert p.params > 0 and p.flops > 0
    assert all(c["params"] > 0 for k, c in p.components.items() if k != "adapter")


@pytest.mark.parametrize("name", ["micro", "tiny-bifpn"])
def test_small_builtin_models_run(name):
    m = create_model(name).eval()
    size = m.spec.image_size
    with torch.no_grad():
        cls, box = m(torch.rand(1, 3, size, size))
    assert [tuple(c.shape[-2:]) for c in cls] == m.feature_sizes(size)
