"""Results files and thresholds: `edg train|ablation --results FILE --require METRIC>=VALUE`
(what `make proof` and `make ablation` run) write what they measured with the command,
versions, date and machine, and exit 1 when the run misses its threshold."""

import json

import pytest

from efficientdet_graph.errors import ConfigError
from efficientdet_graph.train import make_synthetic, parse_requirement


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", num_train=16, num_val=8, image_size=64, seed=3)


def test_requirement_syntax():
    r = parse_requirement("map50>=0.5")
    assert (r.metric, r.op, r.value) == ("map50", ">=", 0.5)
    assert r.check({"map50": 0.5})["passed"] and not r.check({"map50": 0.49})["passed"]
    assert not r.check({})["passed"]  # a metric the run did not produce is a miss, not a pass
    assert parse_requirement(" loss < 2e-1 ").check({"loss": 0.1})["passed"]
    for bad in ("map50", "map50=>0.5", ">=0.5", "map50>=half"):
        with pytest.raises(ConfigError):
            parse_requirement(bad)


def _train(edg, data, out, *extra):
    return edg("train", "micro", "--data", data, "--batch-size", "8", "--epochs", "1", "--quiet",
               "--out", out, *extra)


def test_train_checks_its_thresholds_exit_1_and_results_file(edg, data, tmp_path):
    results = tmp_path / "proof.json"
    code, out, err = _train(edg, data, tmp_path / "run", "--results", results,
                            "--require", "map50>=0.99", "--require", "map50>=0")
    assert code == 1 and "FAILED: map50" in err and "ok: map50" in out
    doc = json.loads(results.read_text())
    assert doc["passed"] is False and [r["passed"] for r in doc["requirements"]] == [False, True]
    assert doc["requirements"][0]["measured"] == doc["metrics"]["map50"]
    assert "train micro" in doc["command"]
    assert {"date", "versions", "machine", "config", "curves"} <= set(doc)
    assert doc["versions"]["torch"] and doc["machine"]["cpu_count"]
    assert [c["epoch"] for c in doc["curves"]] == [1] and "map50" in doc["curves"][0]
    assert (tmp_path / "proof.png").exists() and doc["curves_png"] == "proof.png"


def test_bad_requirement_is_exit_2_before_training(edg, data, tmp_path):
    code, _, err = _train(edg, data, tmp_path / "run", "--require", "map50 at least 0.5")
    assert code == 2 and "METRIC>=VALUE" in err and not (tmp_path / "run").exists()


def test_makefile_proof_and_ablation_check_thresholds_and_write_results():
    from pathlib import Path

    make = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    proof = make[make.index("\nproof:"):].split("\n\n")[0]
    ablation = make[make.index("\nablation:"):].split("\n\n")[0]
    assert "--require 'map50>=0.5'" in proof and "--results results/proof.json" in proof
    assert "--results results/ablation.json" in ablation
