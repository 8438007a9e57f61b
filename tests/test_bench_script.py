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
