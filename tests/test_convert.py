"""`edg convert` reproduces effdet's network or refuses: never a different network in silence.

A representative subset of effdet's configs runs here; scripts/check_convert_effdet.py
runs every config and its results file, docs/convert-effdet.json, is checked below."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

effdet = pytest.importorskip("effdet", reason="effdet is a test dependency: pip install '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_convert_effdet", ROOT / "scripts" / "check_convert_effdet.py")
check_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_script)


@pytest.mark.parametrize("name", [
    "efficientdet_d4",        # PyTorch backbone with TF padding: converted as a different model before
    "tf_efficientdet_d1_ap",  # TF backbone and padding, redundant biases
    "efficientdet_lite0",     # heads in effdet's level-first BN layout, relu6
    "tf_efficientdet_lite0",  # sum fusion, relu6 in the feature network, anchor scale 3
])
def test_effdet_config_converts_to_the_same_network(name):
    row = check_script.check(name, size=96)
    assert row["status"] == "equal", row


@pytest.mark.parametrize("name,reason", [
    ("efficientdet_q0", "fpn_name='qufpn_fa'"),
    ("cspresdet50", "separable_conv=False"),
    ("efficientdet_w0", "feature_location"),
])
def test_effdet_config_we_cannot_build_is_refused_with_the_reason(name, reason):
    row = check_script.check(name, size=96)
    assert row["status"] == "refused" and reason in row["reason"] and "same network" in row["reason"]


@pytest.fixture(scope="module")
def d4_checkpoint(tmp_path_factory):
    ref = check_script.randomized_effdet("efficientdet_d4", 96)
    path = tmp_path_factory.mktemp("convert") / "d4.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    return ref, path


def _same(ref, ours_path):
    from efficientdet_graph.model import load_model

    ours = load_model(ours_path).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        (rc, rb), (oc, ob) = ref(x), ours(x)
    return max(float((a - b).abs().max()) for a, b in zip(rc + rb, oc + ob)) <= 1e-4 * max(
        1.0, max(float(t.abs().max()) for t in rc + rb))


def test_cli_refuses_an_ambiguous_checkpoint(edg, d4_checkpoint, tmp_path):
    """efficientdet_d4's tensors are tf_efficientdet_d4's: without a name for the network, exit 2."""
    _, path = d4_checkpoint
    out = tmp_path / "x.pt"
    code, _, err = edg("convert", path, "--model", "efficientdet-d4", "-o", out)
    assert code == 2 and "--effdet-config" in err and "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("flags", [["--effdet-config", "efficientdet_d4"],
                                   ["--model", "efficientdet-d4", "--padding", "same"]])
def test_cli_converts_a_named_network_exactly(edg, d4_checkpoint, tmp_path, flags):
    ref, path = d4_checkpoint
    out = tmp_path / "d4.pt"
    code, text, err = edg("convert", path, *flags, "-o", out)
    assert code == 0, err
    assert "padding same" in text and "efficientnet_b4" in text
    assert _same(ref, out)


def test_cli_unknown_effdet_config_is_exit_2(edg, d4_checkpoint, tmp_path):
    _, path = d4_checkpoint
    code, _, err = edg("convert", path, "--effdet-config", "efficientdet_d44", "-o", tmp_path / "x.pt")
    assert code == 2 and "did you mean 'efficientdet_d4'" in err


def test_every_effdet_config_was_checked():
    """The committed run of scripts/check_convert_effdet.py covers every config of the
    installed effdet, and each one is equal or refused."""
    from effdet.config.model_config import efficientdet_model_param_dict

    results = json.loads((ROOT / "docs" / "convert-effdet.json").read_text())
    rows = {r["config"]: r for r in results["rows"]}
    assert set(efficientdet_model_param_dict) <= set(rows)
    bad = {n: r for n, r in rows.items() if r["status"] not in ("equal", "refused")}
    assert not bad, bad
    wanted = [f"efficientdet_d{i}" for i in range(6)] + [f"tf_efficientdet_d{i}" for i in range(8)] + [
        "tf_efficientdet_d7x"]
    assert all(rows[n]["status"] == "equal" for n in wanted), {n: rows[n] for n in wanted}
    assert {"command", "date", "machine", "versions"} <= set(results)
