"""`edg ablation` with seeds and at equal cost (issue 17 item 6): per graph the mean, sample
SD and range of its seeds, resumable per (graph, seed), and graphs matched in feature-network
FLOPs. Expected figures are read back from each run's own metrics file and counted by
torch's FLOP counter on the built models, not taken from the code under test."""

import json
import math
import shutil
import statistics

import pytest

from efficientdet_graph.cli import main
from efficientdet_graph.model import create_model, load_model
from efficientdet_graph.profile import model_cost, profile_model
from efficientdet_graph.train import make_synthetic
from efficientdet_graph.search.ablation import plan_scales
from efficientdet_graph.train.progress import MetricsLog

# one epoch of one step on 8 images of 64 px, no loader processes: seconds per run
FAST = ("--model", "micro", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--quiet")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_synthetic(tmp_path_factory.mktemp("syn") / "data", num_train=8, num_val=8, image_size=64, seed=3)
    shutil.copytree(root / "val", root / "test")  # a test split: every run is scored on it too
    return root


@pytest.fixture(scope="module")
def seeded(data, tmp_path_factory):
    """fpn and bifpn, seeds 0 and 1: four runs. What it wrote is kept before later tests
    resume into the same folder."""
    out = tmp_path_factory.mktemp("ablation") / "out"
    results = out.parent / "results.json"
    code = main(["ablation", *FAST, "--graphs", "fpn", "bifpn", "--seeds", "0", "1", "--data", str(data),
                 "--out", str(out), "--results", str(results), "--require", "map50>=0"])
    return {"code": code, "out": out, "rows": json.loads((out / "table.json").read_text()),
            "table": (out / "table.md").read_text(), "results": json.loads(results.read_text())}


def _final(run):
    """The run's last epoch line of its metrics file: (mAP@0.5, mAP)."""
    ends = [r for r in MetricsLog(run / "metrics.jsonl").read() if r.get("type") == "epoch"]
    return ends[-1]["map50"], ends[-1]["map"]


def test_seeds_give_every_graph_its_mean_sd_and_range(seeded, data):
    out, rows = seeded["out"], seeded["rows"]
    assert seeded["code"] == 0
    assert [r["graph"] for r in rows] == ["fpn", "bifpn"] and all(r["seeds"] == [0, 1] for r in rows)
    assert sorted(p.parent.relative_to(out).as_posix() for p in out.glob("*/seed-*/last.pt")) == [
        "bifpn/seed-0", "bifpn/seed-1", "fpn/seed-0", "fpn/seed-1"]
    figures = []
    for r in rows:
        for i, metric in enumerate(("map50", "map")):
            values = [_final(out / r["graph"] / f"seed-{s}")[i] for s in (0, 1)]
            figures += values
            got = r["val"][metric]
            assert got["values"] == values
            assert got["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert got["sd"] == pytest.approx(statistics.stdev(values), abs=1e-12)  # n - 1
            assert (got["min"], got["max"]) == (min(values), max(values))
            assert r[metric] == got["mean"]  # what --require checks
            assert f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" in seeded["table"]
        # the test split: each run's final checkpoint scored there too (a copy of val here)
        for s, run in zip((0, 1), r["runs"]):
            assert run["seed"] == s and set(run["test"]) >= {"map", "map50"}
            kept = json.loads((out / r["graph"] / f"seed-{s}" / "test.json").read_text())
            assert run["test"]["map50"] == kept["metrics"]["map50"]
            assert run["test"]["map50"] == pytest.approx(run["val"]["map50"], abs=0.02)
        assert r["test"]["map50"]["mean"] == pytest.approx(statistics.mean(x["test"]["map50"] for x in r["runs"]))
    assert len(set(figures)) > 2, "the seeds must differ, or mean and SD prove nothing"
    assert "test mAP@0.5 mean ± SD" in seeded["table"] and "Pooled seed SD" in seeded["table"]
    doc = seeded["results"]
    assert doc["rows"] == rows and doc["config"]["seeds"] == [0, 1] and doc["passed"] is True
    assert [q["measured"] for q in doc["requirements"]] == [r["map50"] for r in rows]


def test_resume_trains_only_what_is_not_finished(seeded, data, capsys):
    out = seeded["out"]
    runs = [out / g / f"seed-{s}" for g in ("fpn", "bifpn") for s in (0, 1)]
    kept = {run: ((run / "last.pt").stat().st_mtime_ns, (run / "metrics.jsonl").read_text()) for run in runs}
    # bifpn seed 1 was killed after its last checkpoint, before its final evaluation was
    # logged: not finished, and resuming it would evaluate nothing, so it trains anew
    lines = kept[runs[3]][1].splitlines()
    (runs[3] / "metrics.jsonl").write_text("\n".join(line for line in lines if '"type": "epoch"' not in line) + "\n")
    capsys.readouterr()
    code = main(["ablation", *FAST, "--graphs", "fpn", "bifpn", "--seeds", "0", "1", "--data", str(data),
                 "--out", str(out), "--resume"])
    printed = capsys.readouterr().out
    assert code == 0 and printed.count("not trained again") == 3 and "training it anew" in printed
    for run in runs[:3]:
        assert ((run / "last.pt").stat().st_mtime_ns, (run / "metrics.jsonl").read_text()) == kept[run]
    assert (runs[3] / "last.pt").stat().st_mtime_ns != kept[runs[3]][0]
    assert '"type": "epoch"' in (runs[3] / "metrics.jsonl").read_text()
    rows = json.loads((out / "table.json").read_text())
    assert rows[0]["val"] == seeded["rows"][0]["val"]  # the finished runs' figures, read back


def test_gate_decides_the_exit_code_from_the_seed_noise(seeded, data, capsys):
    """The no-fusion floor added in front of the finished runs: only its two runs train."""
    out = seeded["out"]
    capsys.readouterr()
    code = main(["ablation", *FAST, "--graphs", "nofusion", "fpn", "bifpn", "--seeds", "0", "1", "--data", str(data),
                 "--out", str(out), "--resume", "--gate"])
    printed = capsys.readouterr().out
    assert printed.count("not trained again") == 4
    groups = {g: [_final(out / g / f"seed-{s}")[0] for s in (0, 1)] for g in ("nofusion", "fpn", "bifpn")}
    sd = math.sqrt(statistics.fmean(statistics.variance(v) for v in groups.values()))  # equal n: pooled SD
    means = {g: statistics.mean(v) for g, v in groups.items()}
    passed = (min(means["fpn"], means["bifpn"]) - means["nofusion"] > 3 * sd
              and abs(means["fpn"] - means["bifpn"]) > 2 * sd)
    assert code == (0 if passed else 1)
    assert f"Noise-floor gate {'passed' if passed else 'FAILED'}" in printed
    assert f"Pooled seed SD of val mAP@0.5: {sd:.4f}" in printed


def test_match_flops_trains_each_graph_at_the_first_graphs_cost(data, tmp_path, capsys):
    graphs, tolerance = ("bifpn", "fpn", "nasfpn"), 0.10
    base = {g: model_cost(create_model("micro", graph=g).spec).components["fpn"]["flops"] for g in graphs}
    # at equal width and depth they are far apart: matching has work to do
    assert all(abs(base[g] / base["bifpn"] - 1) > tolerance for g in graphs[1:])
    out = tmp_path / "out"
    code = main(["ablation", *FAST, "--graphs", *graphs, "--match", "flops", "--data", str(data), "--out", str(out)])
    assert code == 0
    rows = {r["graph"]: r for r in json.loads((out / "table.json").read_text())}
    trained = {}
    for g in graphs:
        model = load_model(out / g / "last.pt")  # one seed without --seeds: today's OUT/GRAPH
        trained[g] = profile_model(model).components["fpn"]["flops"]  # torch's counter on the trained model
        assert (rows[g]["repeat"], rows[g]["channels"]) == (model.spec.fpn_repeat, model.spec.fpn_channels)
        assert abs(trained[g] / trained["bifpn"] - 1) <= tolerance, (g, trained)
        assert rows[g]["fpn_flops"] == trained[g]
    assert (rows["bifpn"]["repeat"], rows["bifpn"]["channels"]) == (1, 16)  # the first graph: the spec's scale
    # repeat first: FPN gets there with more layers at the spec's width; NAS-FPN, dearer at
    # one layer already, only by a smaller width
    assert rows["fpn"]["channels"] == 16 and rows["fpn"]["repeat"] > 1
    assert rows["nasfpn"]["repeat"] == 1 and rows["nasfpn"]["channels"] < 16
    # resuming these runs at the spec's scale would go on training the matched networks
    # under the unmatched rows' names: refused
    before = (out / "fpn" / "last.pt").stat().st_mtime_ns
    code = main(["ablation", *FAST, "--graphs", *graphs, "--data", str(data), "--out", str(out), "--resume"])
    assert code == 2 and "fpn at repeat 2, width 16" in capsys.readouterr().err
    assert (out / "fpn" / "last.pt").stat().st_mtime_ns == before


def test_match_width_changes_the_width_first():
    graphs, tolerance = ("nasfpn", "fpn", "bifpn"), 0.10
    scales = plan_scales("micro", graphs, "width", tolerance)
    counted = [profile_model(create_model("micro", graph=s.graph, fpn_repeat=s.repeat, fpn_channels=s.channels))
               .components["fpn"]["flops"] for s in scales]
    assert all(s.repeat == 1 for s in scales) and all(s.channels > 16 for s in scales[1:])
    assert all(abs(c / counted[0] - 1) <= tolerance for c in counted)
    assert [s.fpn_flops for s in scales] == counted


@pytest.mark.parametrize("argv,message", [
    (["--match", "cost"], "invalid choice"),
    (["--seeds"], "expected at least one argument"),
    (["--tolerance", "0"], "--tolerance"),
])
def test_bad_arguments_exit_2(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["ablation", *FAST, "--graphs", "fpn", "bifpn", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "1", "1"], "more than once"),
    (["--gate"], "--gate needs at least 2 seeds"),
    (["--seeds", "0", "1", "--gate"], "at least 3 graphs"),
    (["--match", "flops", "--tolerance", "0.0001"], "cannot bring the feature-network FLOPs of fpn"),
])
def test_impossible_requests_exit_2_before_training(argv, message, data, capsys, tmp_path):
    code = main(["ablation", *FAST, "--graphs", "bifpn", "fpn", "--data", str(data), "--out", str(tmp_path / "o"),
                 *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written
