"""Compound scaling: the paper's Eq. 1-3 against Table 1 (EfficientDet, arXiv 1911.09070 v7;
the table is also in docs/reference.md), the built-in specs and the CLI against the scaler."""

import json

import pytest

from efficientdet_graph.model import load_model_spec
from efficientdet_graph.scale import family, resolve, scale
from efficientdet_graph.spec import ModelSpec

# The paper's compound scaling (EfficientDet, arXiv 1911.09070, §4.2):
#   Eq. 1  W_bifpn = 64 * 1.35^phi,  D_bifpn = 3 + phi
#   Eq. 2  D_box = D_class = 3 + floor(phi / 3)   (head width = W_bifpn)
#   Eq. 3  R_input = 512 + 128 * phi
# Table 1 departs from the formulas in exactly these places (the paper: widths are
# hand-picked, depth and resolution capped); every other entry is the formula's.
WIDTH_HAND_PICKED = {1: "86.4 -> 88", 2: "116.6 -> 112", 3: "157.5 -> 160", 4: "212.6 -> 224", 5: "287.0 -> 288",
                     6: "387.4 -> 384", 7: "523.0 capped at 384", "7x": "as D7"}
DEPTH_CAPPED = {5: "8 -> 7", 6: "9 -> 8", 7: "10 -> 8", "7x": "as D7"}
RESOLUTION_CAPPED = {5: "1152 -> 1280 (raised, as D6)", 7: "1408 -> 1536", "7x": "as D7"}
PHIS = [0, 1, 2, 3, 4, 5, 6, 7, "7x"]


def _formulas(phi):
    p = 7 if phi == "7x" else phi
    return {"width": 64 * 1.35**p, "depth": 3 + p, "head": 3 + p // 3, "resolution": 512 + 128 * p}


@pytest.mark.parametrize("phi", PHIS)
def test_table_1_follows_eq_1_to_3_except_where_documented(phi):
    row, f = scale(phi), _formulas(phi)
    assert row.head_repeat == f["head"]  # Eq. 2 holds for every row
    assert row.fpn_channels % 8 == 0
    if phi in WIDTH_HAND_PICKED:
        assert row.fpn_channels != f["width"]
        if phi not in (7, "7x"):  # hand-picked: the nearest multiple of 8 or 16 near the formula
            assert abs(row.fpn_channels - f["width"]) / f["width"] < 0.06
        else:
            assert row.fpn_channels < f["width"]  # capped
    else:
        assert row.fpn_channels == f["width"]
    if phi in DEPTH_CAPPED:
        assert row.fpn_repeat < f["depth"]
    else:
        assert row.fpn_repeat == f["depth"]
    if phi in RESOLUTION_CAPPED:
        assert row.image_size != f["resolution"] and row.image_size % 128 == 0
    else:
        assert row.image_size == f["resolution"]
    # backbone EfficientNet-B(phi), B6 for D7 (the paper reuses D6's backbone), B7 for D7x
    assert row.backbone == f"efficientnet_b{ {7: 6, '7x': 7}.get(phi, phi) }"
    assert row.fusion == ("sum" if phi in (6, 7, "7x") else "fast_normalized")
    assert row.anchor_scale == (5.0 if phi == 7 else 4.0) and row.levels == ((3, 8) if phi == "7x" else (3, 7))


@pytest.mark.parametrize("phi", range(8, 12))
def test_beyond_the_table_the_formulas_hold(phi):
    row, f = scale(phi), _formulas(phi)
    assert row.fpn_channels == round(f["width"] / 8) * 8
    assert (row.fpn_repeat, row.head_repeat, row.image_size) == (f["depth"], f["head"], f["resolution"])


def as_row(r):
    return (r.image_size, r.backbone, r.fpn_channels, r.fpn_repeat, r.head_repeat, r.fusion, r.anchor_scale,
            tuple(r.levels))


@pytest.mark.parametrize("phi", PHIS)
def test_builtin_specs_match_the_scaler(phi):
    spec, _, _ = load_model_spec(f"efficientdet-d{phi}")
    assert (spec.image_size, spec.backbone.name, spec.fpn_channels, spec.fpn_repeat, spec.head_repeat,
            spec.fusion, spec.anchors.scale, tuple(spec.levels)) == as_row(scale(phi))


def test_family_is_nine_rows_in_order():
    assert [r.name for r in family()] == [f"efficientdet-d{p}" for p in ["0", "1", "2", "3", "4", "5", "6", "7", "7x"]]


def test_formulas_beyond_the_table():
    r = scale(8)  # W = 64 * 1.35^8 = 705.8 -> 704 (nearest multiple of 8), D = 11, head 5, R = 1536
    assert (r.fpn_channels, r.fpn_repeat, r.head_repeat, r.image_size, r.backbone, r.fusion) == (
        704, 11, 5, 1536, "efficientnet_b7", "sum")
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        scale(-1)


def test_resolve_scales_any_graph_and_keeps_what_the_spec_sets():
    spec = resolve(ModelSpec(name="panet-d1", graph="panet", phi=1, image_size=320))
    assert (spec.fpn_channels, spec.fpn_repeat, spec.head_repeat, spec.image_size) == (88, 4, 3, 320)
    assert spec.backbone.name == "efficientnet_b1" and spec.fusion is None  # PANet keeps its own fusion


def test_cli_scale_json_equals_the_scaler(edg):
    code, out, _ = edg("scale", "--family", "efficientdet", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 9
    for r, phi in zip(rows, PHIS):
        assert (r["image_size"], r["backbone"], r["fpn_channels"], r["fpn_repeat"], r["head_repeat"],
                r["fusion"], r["anchor_scale"], tuple(r["levels"])) == as_row(scale(phi))


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
