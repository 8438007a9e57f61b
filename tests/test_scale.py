"""Compound scaling reproduces the paper's Table 1 exactly (typed in from REFERENCE.md)."""

import json

import pytest

from efficientdet_graph.model import load_model_spec
from efficientdet_graph.scale import family, resolve, scale
from efficientdet_graph.spec import ModelSpec

# model: (input, backbone B, W, D_bifpn, D_head, fusion, anchor scale, levels)
TABLE_1 = {
    "0": (512, 0, 64, 3, 3, "fast_normalized", 4.0, (3, 7)),
    "1": (640, 1, 88, 4, 3, "fast_normalized", 4.0, (3, 7)),
    "2": (768, 2, 112, 5, 3, "fast_normalized", 4.0, (3, 7)),
    "3": (896, 3, 160, 6, 4, "fast_normalized", 4.0, (3, 7)),
    "4": (1024, 4, 224, 7, 4, "fast_normalized", 4.0, (3, 7)),
    "5": (1280, 5, 288, 7, 4, "fast_normalized", 4.0, (3, 7)),
    "6": (1280, 6, 384, 8, 5, "sum", 4.0, (3, 7)),
    "7": (1536, 6, 384, 8, 5, "sum", 5.0, (3, 7)),
    "7x": (1536, 7, 384, 8, 5, "sum", 4.0, (3, 8)),
}


def as_row(r):
    return (r.image_size, int(r.backbone[-1]), r.fpn_channels, r.fpn_repeat, r.head_repeat, r.fusion,
            r.anchor_scale, tuple(r.levels))


@pytest.mark.parametrize("phi", sorted(TABLE_1))
def test_scale_matches_table_1(phi):
    assert as_row(scale(phi if phi == "7x" else int(phi))) == TABLE_1[phi]


@pytest.mark.parametrize("phi", sorted(TABLE_1))
def test_builtin_specs_match_table_1(phi):
    spec, _, _ = load_model_spec(f"efficientdet-d{phi}")
    row = TABLE_1[phi]
    assert (spec.image_size, spec.backbone.name, spec.fpn_channels, spec.fpn_repeat, spec.head_repeat,
            spec.fusion, spec.anchors.scale, tuple(spec.levels)) == (
        row[0], f"efficientnet_b{row[1]}", *row[2:6], row[6], row[7])


def test_family_is_nine_rows_in_order():
    assert [r.name for r in family()] == [f"efficientdet-d{p}" for p in ["0", "1", "2", "3", "4", "5", "6", "7", "7x"]]


def test_formulas_beyond_the_table():
    r = scale(8)  # W = 64 * 1.35^8 = 705.8 -> 704 (nearest multiple of 8), D = 11, head 5, R = 1536
    assert (r.fpn_channels, r.fpn_repeat, r.head_repeat, r.image_size, r.backbone, r.fusion) == (
        704, 11, 5, 1536, "efficientnet_b7", "sum")
    with pytest.raises(ValueError):
        scale(-1)


def test_resolve_scales_any_graph_and_keeps_what_the_spec_sets():
    spec = resolve(ModelSpec(name="panet-d1", graph="panet", phi=1, image_size=320))
    assert (spec.fpn_channels, spec.fpn_repeat, spec.head_repeat, spec.image_size) == (88, 4, 3, 320)
    assert spec.backbone.name == "efficientnet_b1" and spec.fusion is None  # PANet keeps its own fusion


def test_cli_scale_json_equals_table_1(edg):
    code, out, _ = edg("scale", "--family", "efficientdet", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 9
    for r in rows:
        phi = str(r["phi"])
        assert (r["image_size"], int(r["backbone"][-1]), r["fpn_channels"], r["fpn_repeat"], r["head_repeat"],
                r["fusion"], r["anchor_scale"], tuple(r["levels"])) == TABLE_1[phi]


def test_scale_is_callable_from_the_package_every_time():
    """`edg.scale` is a lazy name and the stage's package name: both uses keep working, in any order."""
    import subprocess
    import sys

    code = (
        "import efficientdet_graph as e\n"
        "a = e.scale(0).fpn_channels; b = e.scale(1).fpn_channels\n"
        "import efficientdet_graph.scale as s\n"
        "from efficientdet_graph.scale import family\n"
        "c = e.scale('d2').fpn_channels; d = s.family()[3].fpn_channels; f = e.scale.family()[4].fpn_channels\n"
        "print(a, b, c, d, f)\n"
    )
    for prelude in ("", "import efficientdet_graph.model\n", "import efficientdet_graph.scale\n"):
        out = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["64", "88", "112", "160", "224"]


@pytest.mark.parametrize("phi", ["-1", "abc", "d-3", "7y"])
def test_cli_scale_bad_phi_is_exit_2_without_traceback(edg, phi):
    code, out, err = edg("scale", "--phi", phi)
    assert code == 2 and "Traceback" not in err and "phi" in err


def test_scale_bad_phi_is_a_config_error():
    from efficientdet_graph import ConfigError

    for bad in (-1, "abc", 1.5, None):
        with pytest.raises(ConfigError, match="phi"):
            scale(bad)
