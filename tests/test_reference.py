"""The reference-table builder: a killed build loses only its job in flight and repeats no
finished job; two builders share the jobs without training one twice; the noise-floor
gate's statistics against hand-computed figures.

The builds are real (`edg search reference` in subprocesses, real SIGKILL) at a tiny
schedule; what happened is read back from the journal with Optuna's own API."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from efficientdet_graph.search.reference import gate, pooled_sd, summarize

EDG = [sys.executable, "-m", "efficientdet_graph"]
TINY = ["--schedule", "image_size=64", "--schedule", "epochs=1", "--schedule", "pretrain_epochs=0",
        "--schedule", "batch_size=4", "--schedule", "channels=8", "--schedule", "head_repeat=1",
        "--schedule", "repeat=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refdata")
    subprocess.run(EDG + ["data", "synthetic", "--task", "multiscale", "--out", str(root), "--train", "8",
                          "--val", "4", "--test", "4", "--size", "96"], check=True, capture_output=True)
    return root


def _command(data: Path, out: Path, *extra: str, seeds: tuple[str, ...] = ("0", "1")) -> list[str]:
    return EDG + ["search", "reference", "--floor-only", "--floor", "nofusion", "fpn", "bifpn",
                  "--floor-seeds", *seeds, "--data", str(data), "--out", str(out), "--heartbeat", "1", "--no-gate", *TINY,
                  *extra]


def _trials(out: Path) -> list:
    storage = JournalStorage(JournalFileBackend(str(out / "jobs.journal")))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)


def _wait_running(out: Path, pid: int, timeout: float = 120) -> int:
    """The number of the trial process ``pid`` is running, once it runs one."""
    end = time.time() + timeout
    while time.time() < end:
        if (out / "jobs.journal").exists():
            try:
                for t in _trials(out):
                    if t.state == TrialState.RUNNING and f":{pid}:" in t.user_attrs.get("edg_worker", ""):
                        return t.number
            except (ValueError, KeyError):  # the study is being created
                pass
        time.sleep(0.05)
    raise AssertionError("no job started")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_killed_build_restarted_finishes_every_job_exactly_once(data, tmp_path):
    out = tmp_path / "build"
    first = subprocess.Popen(_command(data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        # let one job finish first, so the restart has a finished job it must not repeat
        end = time.time() + 120
        while time.time() < end and not any(t.state == TrialState.COMPLETE for t in
                                            (_trials(out) if (out / "jobs.journal").exists() else [])):
            time.sleep(0.05)
        killed = _wait_running(out, first.pid)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(timeout=30)
    done_before = {t.user_attrs["edg_key"]: t.number for t in _trials(out) if t.state == TrialState.COMPLETE}
    assert done_before, "the kill came before any job finished"
    again = subprocess.run(_command(data, out), capture_output=True, text=True, timeout=300, env=_env())
    assert again.returncode == 0, again.stderr[-2000:]
    trials = _trials(out)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    keys = [t.user_attrs["edg_key"] for t in complete]
    assert len(keys) == 6 and len(set(keys)) == 6  # 3 networks x 2 seeds, each once
    for key, number in done_before.items():  # finished before the kill: never re-run
        assert [t.number for t in complete if t.user_attrs["edg_key"] == key] == [number]
    (lost,) = [t for t in trials if t.state == TrialState.FAIL]
    assert lost.number == killed and lost.user_attrs["edg_status"] == "lost"
    (retry,) = [t for t in complete if t.user_attrs.get("edg_retry_of") == killed]
    assert retry.user_attrs["edg_attempt"] == 2 and retry.user_attrs["edg_key"] == lost.user_attrs["edg_key"]
    # the same command once more: nothing left to do, nothing re-run
    third = subprocess.run(_command(data, out), capture_output=True, text=True, timeout=120, env=_env())
    assert third.returncode == 0 and len(_trials(out)) == len(trials)


def test_a_job_stopped_and_resumed_reports_the_seconds_of_both_attempts(data, tmp_path):
    out = tmp_path / "stopped"
    cmd = _command(data, out, "--schedule", "epochs=12", seeds=("0",))  # the later epochs= wins
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        stopped = _wait_running(out, first.pid)
        time.sleep(2.0)  # into the training loop, whose SIGTERM handler finishes the step and saves
        os.kill(first.pid, signal.SIGTERM)
        first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert again.returncode == 0, again.stderr[-2000:]
    trials = _trials(out)
    (before,) = [t for t in trials if t.number == stopped]
    assert before.user_attrs["edg_status"] == "interrupted", before.user_attrs
    (retry,) = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("edg_retry_of") == stopped]
    # the first attempt ran >= 2 s before the stop; the sum counts it, the last attempt alone does not
    assert retry.user_attrs["wall_s_all_attempts"] >= retry.user_attrs["wall_s"] + 1.5


def _builders_finish_every_job_once(cmds: list[list[str]], out: Path) -> tuple[list[subprocess.Popen], set[str]]:
    """Run the builders to the end; every one of the 6 jobs finished exactly once. Returns
    the builders and the pids that trained the jobs."""
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
             for c in cmds]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    trials = _trials(out)
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    keys = [t.user_attrs["edg_key"] for t in trials]
    assert len(keys) == 6 and len(set(keys)) == 6
    return procs, {t.user_attrs["edg_worker"].split(":")[1] for t in trials}


def test_two_builders_share_the_jobs_without_duplicates(data, tmp_path):
    out = tmp_path / "shared"
    procs, workers = _builders_finish_every_job_once([_command(data, out)] * 2, out)
    assert workers <= {str(p.pid) for p in procs}


def test_local_worker_processes_share_the_jobs_without_duplicates(data, tmp_path):
    """``--workers 2``: spawned processes split the command's jobs, each trained once."""
    out = tmp_path / "local"
    (proc,), workers = _builders_finish_every_job_once([_command(data, out, "--workers", "2")], out)
    assert str(proc.pid) not in workers  # trained by the spawned workers


def _pg_trials(storage) -> list:
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)


def test_two_machines_on_postgresql_one_killed_every_job_once(data, tmp_path, postgres):
    """Two builders with their own folders ("machines") on one PostgreSQL server; one is
    SIGKILLed mid-job: the other takes the job over once its heartbeat is stale."""
    cmd = lambda out: _command(data, out, "--storage", postgres)  # noqa: E731
    # one storage (one connection pool) for all the polling below: a new one per poll
    # leaves its connections open and runs the server out of clients
    storage = optuna.storages.RDBStorage(postgres.replace("postgresql://", "postgresql+psycopg2://"))
    a = subprocess.Popen(cmd(tmp_path / "a"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    b = subprocess.Popen(cmd(tmp_path / "b"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=_env())
    try:
        end, killed = time.time() + 120, None
        while killed is None and time.time() < end:
            try:
                killed = next((t.number for t in _pg_trials(storage) if t.state == TrialState.RUNNING
                               and f":{a.pid}:" in t.user_attrs.get("edg_worker", "")), None)
            except ValueError:  # the study is being created
                pass
            time.sleep(0.05)
        assert killed is not None, "the first builder never ran a job"
        os.kill(a.pid, signal.SIGKILL)
        _, err = b.communicate(timeout=300)
        assert b.returncode == 0, err[-2000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
            p.wait()
    trials = _pg_trials(storage)
    storage.engine.dispose()
    # the two builders added the same 6 jobs at once: under PostgreSQL's advisory lock they
    # took turns, so no job was queued twice (the claim-time rule would only clean up after)
    assert not [t for t in trials if t.user_attrs.get("edg_status") == "duplicate"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    keys = [t.user_attrs["edg_key"] for t in complete]
    assert len(keys) == 6 and len(set(keys)) == 6
    (lost,) = [t for t in trials if t.state == TrialState.FAIL]
    assert lost.number == killed and lost.user_attrs["edg_status"] == "lost"
    (retry,) = [t for t in complete if t.user_attrs.get("edg_retry_of") == killed]
    assert retry.user_attrs["edg_attempt"] == 2


def _rows(values: dict[str, list[float]]) -> list[dict]:
    return [{"network": n, "key": n, "source": "graph", "repeat": 1, "seed": s, "val": {"map50": v},
             "test": {"map50": v}, "wall_s": 1.0} for n, vs in values.items() for s, v in enumerate(vs)]


def test_pooled_sd_and_gate_against_hand_computed_figures():
    values = {"nofusion": [0.10, 0.12, 0.11, 0.13, 0.09], "fpn": [0.30, 0.32, 0.31, 0.29, 0.33],
              "panet": [0.35, 0.36, 0.34, 0.37, 0.33], "bifpn": [0.40, 0.41, 0.39, 0.42, 0.38]}
    # each group: deviations -0.02..+0.02 around its mean: variance 0.001/4 = 0.00025
    assert pooled_sd(list(values.values())) == pytest.approx(math.sqrt(0.00025))
    assert pooled_sd([[1.0, 3.0], [10.0, 10.0, 10.0]]) == pytest.approx(math.sqrt(2.0 / 3.0))
    table = summarize(_rows(values))
    assert [s["network"] for s in table] == ["bifpn", "panet", "fpn", "nofusion"]
    assert table[0]["val"]["sd"] == pytest.approx(statistics.stdev(values["bifpn"]))
    g = gate(table)
    sd = math.sqrt(0.00025)
    assert g["margin"] == pytest.approx(0.31 - 0.11) and g["spread"] == pytest.approx(0.40 - 0.31)
    assert g["margin_in_sd"] == pytest.approx(0.20 / sd) and g["passed"] is True

    close = {**values, "bifpn": [0.31, 0.33, 0.30, 0.32, 0.29]}  # fusing necks 0.31, 0.35, 0.31: 2.5 SD
    assert gate(summarize(_rows(close)))["passed"] is True
    tied = {**values, "panet": [0.31, 0.30, 0.32, 0.29, 0.33], "bifpn": [0.32, 0.31, 0.30, 0.33, 0.29]}
    g = gate(summarize(_rows(tied)))
    assert g["passed"] is False and g["worst_ok"] and not g["spread_ok"]
    floor_not_worst = {**values, "nofusion": [0.28, 0.30, 0.29, 0.31, 0.27]}
    assert gate(summarize(_rows(floor_not_worst)))["worst_ok"] is False
    few = {n: v[:3] for n, v in values.items()}
    assert gate(summarize(_rows(few)))["passed"] is None  # waiting for 5 seeds each


def test_a_space_point_and_its_built_in_are_one_network_of_the_table():
    """The table dedups by structure with ops: bifpn_edges' fpn point writes `fusion:
    fast_normalized` on its one-input top node, the built-in `sum`; a node with one input
    fuses nothing, so both are the same network -- and a real fusion change is not."""
    from efficientdet_graph.graph import canonical_hash
    from efficientdet_graph.passes import load_graph
    from efficientdet_graph.search.reference import network_from_graph, space_networks

    points = {n.name: n.key for n in space_networks("bifpn_edges", 0)}
    for name in ("fpn", "panet", "bifpn"):
        assert points[name] == network_from_graph(name, load_graph(name), 2, "graph").key, name
    g = load_graph("fpn")
    single = g.copy()
    single.nodes["P7_out"]["fusion"] = "concat"  # one input: not fused
    double = g.copy()
    double.nodes["P6_out"]["fusion"] = "concat"  # two inputs: another network
    assert canonical_hash(single) == canonical_hash(g) != canonical_hash(double)


@pytest.mark.parametrize("bad, says", [
    (["--schedule", "epochs=abc"], "epochs takes a int"),
    (["--schedule", "epoch=3"], "did you mean 'epochs'"),
    (["--schedule", "image_size=0"], "image_size must be >= 1"),
    (["--schedule", "pretrain_task=imagenet"], "classify or detect"),
    (["--floor", "nofusoin", "fpn", "bifpn"], "unknown built-in graph 'nofusoin'"),
    (["--graphs", "nasfpn:0"], "NAME:REPEAT"),
    (["--graphs", "nasfpn@4"], "NAME@WIDTH"),
    (["--graphs", "bifpn:2", "--matched", "fpn", "--tolerance", "1.5"], "--tolerance 1.5"),
    (["--graphs", "bifpn:2", "--match-by", "detector-width"], "name them with --matched"),
    (["--workers", "0"], "--workers 0"),
    (["--seeds", "-1"], "seeds must be distinct"),
    (["--floor-seeds", "1", "1"], "seeds must be distinct"),
])
def test_bad_reference_arguments_exit_2_with_the_reason(data, tmp_path, edg, bad, says):
    code, _, err = edg("search", "reference", "--data", str(data), "--out", str(tmp_path / "x"), *bad)
    assert code == 2 and says in err and "Traceback" not in err


def test_another_schedule_in_the_same_folder_never_resumes_the_first_ones_jobs(data, tmp_path):
    """Jobs are keyed by network and seed *within* a schedule: a second schedule's job of the
    same network and seed trains from its own start (it once resumed the first's finished
    checkpoint and reported that network's figures as its own)."""
    out = tmp_path / "two"
    base = _command(data, out, seeds=("0",))
    first = subprocess.run(base, capture_output=True, text=True, timeout=300, env=_env())
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(base + ["--schedule", "epochs=2"], capture_output=True, text=True, timeout=300,
                            env=_env())
    assert second.returncode == 0, second.stderr[-2000:]
    folders = sorted(p for p in (out / "jobs").iterdir())
    assert len(folders) == 2  # one per schedule
    runs = {f.name: sorted(p.parent.name for p in f.rglob("last.pt")) for f in folders}
    assert all(len(v) == 3 for v in runs.values()) and len(set(map(tuple, runs.values()))) == 1
    epochs = sorted({sum(1 for line in m.read_text().splitlines() if '"type": "epoch"' in line)
                     for f in folders for m in f.rglob("metrics.jsonl")})
    assert epochs == [1, 2]  # each schedule trained its own jobs, for its own number of epochs


def test_other_data_in_the_same_folder_never_resumes_the_first_ones_jobs(data, tmp_path):
    """The same schedule on changed data (a regenerated task, another --data folder) is
    another build: its jobs train afresh instead of reporting the old data's checkpoints."""
    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    ann = changed / "train" / "annotations.json"
    coco = json.loads(ann.read_text())
    coco["annotations"] = coco["annotations"][1:]  # one object less: other data
    ann.write_text(json.dumps(coco))
    out = tmp_path / "build"
    for d in (data, changed):
        run = subprocess.run(_command(d, out, seeds=("0",)), capture_output=True, text=True, timeout=300, env=_env())
        assert run.returncode == 0, run.stderr[-2000:]
        assert "3 job(s) added" in run.stderr + run.stdout
    folders = sorted(p for p in (out / "jobs").iterdir())
    assert len(folders) == 2 and all(len(list(f.rglob("last.pt"))) == 3 for f in folders)


def test_per_class_table_is_the_mean_over_seeds_of_each_class():
    from efficientdet_graph.search.reference_report import per_class_table

    rows = [{"network": "n", "val": {"map50": 0.5, "ap50/a": 0.2, "ap50/b": 0.9}},
            {"network": "n", "val": {"map50": 0.5, "ap50/a": 0.4, "ap50/b": 0.7}},
            {"network": "m", "val": {"map50": 0.1, "ap50/a": 0.1}}]
    text = per_class_table([{"network": "n"}, {"network": "m"}], rows)
    assert "| network | a | b |" in text
    assert "| n | 0.30 | 0.80 |" in text and "| m | 0.10 | – |" in text
    assert per_class_table([{"network": "n"}], [{"network": "n", "val": {"map50": 0.5}}]) == ""


def test_a_floor_only_report_shows_the_floor_not_the_other_jobs_of_the_folder(data, tmp_path):
    out = tmp_path / "mixed"
    full = [a for a in _command(data, out, "--graphs", "nasfpn:1", seeds=("0",)) if a != "--floor-only"]
    first = subprocess.run(full, capture_output=True, text=True, timeout=300, env=_env())
    assert first.returncode == 0, first.stderr[-2000:]
    res = tmp_path / "floor.json"
    report = subprocess.run(_command(data, out, "--report", "--results", str(res), seeds=("0",)), capture_output=True,
                            text=True, timeout=300, env=_env())
    assert report.returncode == 0, report.stderr[-2000:]
    doc = json.loads(res.read_text())
    assert sorted(r["network"] for r in doc["table"]) == ["bifpn", "fpn", "nofusion"]
    # its job counts are its own, as its cost is: not nasfpn's job in the same queue
    assert doc["jobs"] == {"done": 3} and doc["cost"]["jobs_done"] == 3
    # every run keeps the AP50 of each class present in its 4 search-val images
    assert all(sum(k.startswith("ap50/") for k in run["val"]) >= 3 for run in doc["runs"])
    assert "AP@0.5 per class" in res.with_suffix(".md").read_text()


def test_a_job_setting_reuses_the_shared_backbone_a_pretraining_setting_does_not(data, tmp_path):
    out = tmp_path / "shared"
    cmd = _command(data, out, seeds=("0",))
    i = cmd.index("pretrain_epochs=0")
    base = cmd[:i - 1] + cmd[i + 1:]  # without TINY's "--schedule pretrain_epochs=0"
    runs = [["--schedule", "pretrain_epochs=1", "--schedule", "epochs=1"],
            ["--schedule", "pretrain_epochs=1", "--schedule", "epochs=2"],           # a job setting
            ["--schedule", "pretrain_epochs=1", "--schedule", "pretrain_lr=0.001"]]  # a pre-training one
    folders = []
    for extra in runs:
        run = subprocess.run(base + extra, capture_output=True, text=True, timeout=300, env=_env())
        assert run.returncode == 0, run.stderr[-2000:]
        folders.append(sorted(p.name for p in out.glob("pretrain-*")))
    assert len(folders[0]) == 1 and folders[1] == folders[0]  # epochs=2 trained no second backbone
    assert len(folders[2]) == 2


def test_the_default_schedule_hashes_every_setting():
    """The fingerprint names a build: it is the hash of every setting, written out here by
    hand, so a setting added or changed is a new build, never a resumed old one."""
    import hashlib

    from efficientdet_graph.search.reference import Schedule

    now = {"backbone": "lcnet_050", "image_size": 192, "channels": 32, "repeat": 1, "head_repeat": 1,
           "anchor_scale": 1.5, "epochs": 15, "batch_size": 8, "lr": 4e-3, "backbone_lr": 0.0,
           "backbone_lr_epochs": 2.0, "augment": True, "threads": 1,
           "pretrain_epochs": 10, "pretrain_task": "classify", "pretrain_graph": "nofusion",
           "pretrain_batch_size": 16, "pretrain_lr": 4e-3}
    assert Schedule().fingerprint() == hashlib.sha256(json.dumps(now, sort_keys=True).encode()).hexdigest()[:10]
    assert Schedule(pretrain_lr=1e-3).fingerprint() != Schedule().fingerprint()


def test_a_space_point_named_like_a_floor_network_is_its_own_row():
    """bifpn_edges' point ``fpn`` (two layers) is another network than the floor's ``fpn``
    (one layer): its seeds must not join the floor's, nor move the gate."""
    from efficientdet_graph.search.reference import gate, summarize

    def row(name, key, source, repeat, seed, v):
        return {"network": name, "key": key, "source": source, "repeat": repeat, "seed": seed,
                "val": {"map50": v}, "test": {"map50": v}}

    floor = {"nofusion": [0.60, 0.61, 0.62, 0.61, 0.60], "fpn": [0.80, 0.81, 0.80, 0.82, 0.81],
             "panet": [0.85, 0.86, 0.85, 0.86, 0.85], "bifpn": [0.90, 0.91, 0.90, 0.91, 0.90]}
    rows = [row(n, n, "graph", 1, s, v) for n, vs in floor.items() for s, v in enumerate(vs)]
    rows.append(row("fpn", "other", "point", 2, 0, 0.40))
    table = {s["network"]: s for s in summarize(rows)}
    assert table["fpn"]["seeds"] == [0, 1, 2, 3, 4] and table["fpn"]["val"]["mean"] == pytest.approx(0.808)
    assert table["fpn (point x2)"]["seeds"] == [0] and table["fpn (point x2)"]["val"]["mean"] == 0.40
    assert gate(summarize(rows)) == gate(summarize(rows[:-1]))


def test_a_width_is_part_of_a_networks_key_and_its_model_and_old_keys_stay():
    from efficientdet_graph.cli.reference_commands import _graph_item
    from efficientdet_graph.passes import load_graph
    from efficientdet_graph.search.reference import Schedule, model_yaml, network_from_graph

    committed = {r["network"]: r["key"] for r in json.loads(
        (Path(__file__).parent.parent / "search/results/noise-floor-multiscale.json").read_text())["table"]}
    for name in ("fpn", "bifpn"):  # a table built before widths existed goes on with the same keys
        assert network_from_graph(name, load_graph(name), 1, "graph").key == committed[name]
    wide = network_from_graph("fpn@48", load_graph("fpn"), 1, "graph", channels=48)
    assert wide.key != committed["fpn"]
    assert "fpn_channels: 48" in model_yaml(wide, Schedule(), 10)
    assert "fpn_channels: 32" in model_yaml(network_from_graph("fpn", load_graph("fpn"), 1, "graph"), Schedule(), 10)
    s = Schedule()
    assert _graph_item("bifpn", s) == ("bifpn", 1, None)
    assert _graph_item("bifpn:3@48", s) == ("bifpn", 3, 48)
    assert _graph_item("runs/best/01_trial7.yaml:2@40", s) == ("runs/best/01_trial7.yaml", 2, 40)
    assert _graph_item("gfpn:1", s) == ("gfpn", 1, None)


def test_match_counts_flops_as_the_trained_jobs_measured_them_and_prints_graphs_items(edg):
    from efficientdet_graph.passes import load_graph
    from efficientdet_graph.search.compare import match_at_schedule
    from efficientdet_graph.search.reference import Schedule

    table = json.loads((Path(__file__).parent.parent / "search/results/reference-multiscale.json").read_text())["table"]
    measured = {r["network"]: r["fpn_flops"] for r in table}  # profiled on the trained models
    for name, graph, repeat in (("gfpn", "gfpn", 1), ("bifpn", "bifpn", 1), ("nofusion", "nofusion", 1)):
        result = match_at_schedule(load_graph(graph), repeat, None, [("fpn", load_graph("fpn"))], Schedule())
        assert result["target_flops"] == measured[name]
        for row in result["rows"]:
            assert row["within"] and abs(row["flops"] - measured[name]) <= 0.1 * measured[name]
    code, out, _ = edg("search", "match", "bifpn:2", "--baselines", "fpn", "bifpn")
    items = out.split("--graphs ", 1)[1].split()
    # matched by depth, the target's own graph is itself; by width, a baseline keeps one layer
    assert code == 0 and "bifpn:2" in items and "(+0.0%)" in out
    assert all(":" not in i for i in items if "@" in i)


def test_detector_flops_equal_what_the_trained_jobs_profiled_and_a_detector_match_takes_the_closest_width(edg, tmp_path):
    from efficientdet_graph.passes import load_graph
    from efficientdet_graph.search.compare import detector_flops, match_at_schedule
    from efficientdet_graph.search.reference import Schedule

    root = Path(__file__).parent.parent
    # 17 trained networks -- found graphs, stacks, widened baselines -- each profiled on its
    # built model after training (profile_model), 10 classes
    table = json.loads((root / "search/results/study-multiscale.json").read_text())["table"]
    s = Schedule()
    for r in table:
        (tmp_path / "g.yaml").write_text(r["graph_yaml"])
        assert detector_flops(load_graph(str(tmp_path / "g.yaml")), r["repeat"], r.get("channels") or 32, s,
                              10) == r["flops"], r["network"]
    found = root / "reference/multiscale/search/best/01_trial35.yaml"
    m = match_at_schedule(load_graph(str(found)), 1, None, [("bifpn", load_graph("bifpn"))], s,
                          by=("width", "detector-width"), num_classes=10)
    measured = {r["network"]: r for r in table}
    assert m["target_detector_flops"] == measured["01_trial35"]["flops"]
    by_features, by_detector = m["rows"]
    assert by_features["item"] == "bifpn@72"  # the width match re-trained so far: a costlier detector
    assert measured["bifpn@72"]["flops"] > 1.15 * m["target_detector_flops"]
    w = by_detector["channels"]
    assert by_detector["on"] == "detector" and w < 72 and by_detector["repeat"] == 1
    off = {x: abs(detector_flops(load_graph("bifpn"), 1, x, s, 10) - m["target_detector_flops"]) for x in
           (w - 8, w, w + 8)}
    assert off[w] < off[w - 8] and off[w] < off[w + 8] and off[w] <= 0.10 * m["target_detector_flops"]
    code, out, _ = edg("search", "match", str(found), "--baselines", "bifpn", "--by", "detector-width",
                       "--num-classes", "10")
    assert code == 0 and f"--graphs bifpn@{w}" in out and "(detector)" in out
    with pytest.raises(SystemExit) as info:
        edg("search", "match", "bifpn", "--by", "detector-widht")
    assert info.value.code == 2
    code, _, err = edg("search", "match", "bifpn", "--by", "detector-width", "--num-classes", "0")
    assert code == 2 and "--num-classes 0" in err


def test_matched_baselines_join_the_table_beside_each_found_network(tmp_path):
    import argparse

    from efficientdet_graph.cli.reference_commands import _graph_item, _networks
    from efficientdet_graph.graph import graph_to_yaml
    from efficientdet_graph.passes import load_graph
    from efficientdet_graph.profile.analytic import graph_cost
    from efficientdet_graph.search.reference import Schedule
    from efficientdet_graph.search.zerocost import _backbone_channels

    found = load_graph("bifpn")
    found.graph = {**found.graph, "repeat": 2}  # as `edg search best` writes a found graph: with its depth
    (tmp_path / "found.yaml").write_text(graph_to_yaml(found))
    s = Schedule()
    assert _graph_item(str(tmp_path / "found.yaml"), s)[1] == 2  # the file's own depth
    args = argparse.Namespace(floor=[], floor_only=False, graphs=[str(tmp_path / "found.yaml")], matched=["fpn"],
                              tolerance=0.10, space=None, sampled=0, sample_seed=0)
    nets, floor, pairs = _networks(args, s)
    assert not floor and nets[0].name == "foundx2" and nets[0].repeat == 2
    matched = [n for n in nets if n.source == "matched"]
    assert len(matched) == 2 and {n.channels is None for n in matched} == {True, False}  # by depth, by width
    assert pairs == {nets[0].key: {n.key: [w] for n, w in zip(matched, ("depth", "width"))}}  # what verdicts compare
    in_ch = _backbone_channels(s.backbone, 3, 5)

    def flops(g, repeat, width):
        g = g.copy()
        g.graph = {**g.graph, "outputs": dict(g.graph["outputs"]), "repeat": repeat}
        return graph_cost(g, width, in_ch, s.image_size).flops

    target = flops(load_graph("bifpn"), 2, 32)
    for n in matched:
        assert abs(flops(load_graph("fpn"), n.repeat, n.channels or 32) - target) <= 0.10 * target


def test_the_results_say_whether_test_orders_the_networks_as_search_val_does():
    from efficientdet_graph.search.reference_report import _splits_agree

    def row(val, test):
        return {"val": {"n": 2, "mean": val}, "test": {"n": 2, "mean": test}}

    # pairs (a,b) concordant, (a,c) concordant, (b,c) swapped: tau = (2 - 1) / 3
    got = _splits_agree([row(0.1, 0.1), row(0.2, 0.3), row(0.3, 0.2)])
    assert got["kendall_tau"] == pytest.approx(1 / 3) and got["max_mean_gap"] == pytest.approx(0.1)
    assert _splits_agree([row(0.1, 0.1)])["kendall_tau"] is None
