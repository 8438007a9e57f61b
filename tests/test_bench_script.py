"""The benchmark script (benchmarks/bench_effdet.py) measures fairly and records what it
measured: the first implementation alternates, inference rows run in eval mode, the JSON
holds the versions, repetitions and the output difference. No timing is asserted."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("effdet", reason="effdet is a test dependency: pip install '.[test]'")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_effdet", ROOT / "benchmarks" / "bench_effdet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.path.remove(str(ROOT / "benchmarks"))


def test_first_implementation_alternates(bench):
    calls = []
    fns = {"ours": lambda: calls.append("ours"), "effdet": lambda: calls.append("effdet")}
    row = bench.compare("x", fns, bench.torch.device("cpu"), warmup=0, reps=4)
    assert calls == ["ours", "effdet", "effdet", "ours", "ours", "effdet", "effdet", "ours"]
    assert row["reps"] == 4


def test_json_records_versions_reps_and_output_difference(bench, tmp_path):
    out = tmp_path / "b.json"
    bench.main(["--model", "d0", "--size", "256", "--reps", "1", "--warmup", "0", "--threads", "1",
                "--no-memory", "--out", str(out)])
    doc = json.loads(out.read_text())
    env = doc["env"]
    assert env["effdet"] and env["timm"] and env["torch"] and env["reps"] == 1 and "bench_effdet.py" in env["command"]
    assert 0 <= doc["max_abs_output_difference"]["1"] < 1e-4
    inference = [r for r in doc["rows"] if "training" not in r["what"]]
    assert inference and all(r["eval_mode"] for r in inference)


def test_train_step_bench_records_and_checks_its_target(tmp_path):
    """The training-step benchmark (ours vs effdet's DetBenchTrain) in a tiny configuration:
    both sides train on the same batch (their first losses agree roughly: same weights and
    loss definition, effdet normalises by positives + 1), the JSON holds the provenance, and
    a target it cannot meet makes it exit 1."""
    spec = importlib.util.spec_from_file_location("bench_train_step", ROOT / "benchmarks" / "bench_train_step.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(mod)
        out = tmp_path / "t.json"
        rc = mod.main(["--size", "128", "--batch", "2", "--classes", "3", "--reps", "1", "--warmup", "0",
                       "--target", "0", "--out", str(out)])
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    doc = json.loads(out.read_text())
    assert rc == 1 and doc["target"] == {"ratio_at_most": 0, "measured": doc["rows"][0]["ratio"], "passed": False}
    env = doc["env"]
    assert env["effdet"] and env["timm"] and env["torch"] and "bench_train_step.py" in env["command"]
    first = doc["first_step_loss"]
    assert abs(first["ours"] - first["effdet"]) < 0.2 * first["effdet"]
