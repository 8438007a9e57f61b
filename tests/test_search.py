"""The search stage: spaces, sampling, the study runner (in-process), results and plots.

Trials run the real proxy task at its cheapest (64 px, 32 training images, no
pre-training, ``epochs=0``: the untrained network is scored), so a trial costs about
a second; the proxy's feature cache is built once per module and copied into each
study's run folder. Worker processes and database storages: ``test_search_storage.py``.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest
import torch

from efficientdet_graph.compile import compile_graph, level_size
from efficientdet_graph.errors import SpecError
from efficientdet_graph.graph import build_graph, graph_to_yaml
from efficientdet_graph.profile.counter import count_params
from efficientdet_graph.search import (StudyConfig, candidate_cost, load_space, open_study, point_values,
                                       random_ask, run, sample)
from efficientdet_graph.search.report import hypervolume
from efficientdet_graph.search.study import optuna_ask, slots, trial_status
from efficientdet_graph.spec.builtin import builtin_names
from efficientdet_graph.spec.loader import load_spec_text

PROXY = (("image_size", 64), ("train_images", 32), ("val_images", 16), ("epochs", 0), ("pretrain_epochs", 0),
         ("batch_size", 16), ("channels", 8))
SPACES = builtin_names("search")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Trials here are tiny: one intra-op thread is faster than two fighting over a busy
    machine's cores (measured: 0.4 s against 5-8 s per trial under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def proxy_cache(tmp_path_factory) -> Path:
    """The cheap proxy's feature cache, built once through the real ``ProxyTask``."""
    from efficientdet_graph.search.proxy import ProxyConfig, ProxyTask

    cache = tmp_path_factory.mktemp("proxy") / "proxy-cache"
    ProxyTask(ProxyConfig(**dict(PROXY)), cache)
    return cache


@pytest.fixture
def study_dir(proxy_cache, tmp_path):
    """A run folder holding a copy of the built proxy cache."""

    def make(name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(proxy_cache, out / "proxy-cache")
        return out

    return make


def config(out: Path, space: str = "bifpn_edges", **kw) -> StudyConfig:
    return StudyConfig(space=str(space), out=str(out), proxy=PROXY, quiet=True, **kw)


# ---------------------------------------------------------------------------- spaces


def test_the_three_spaces_the_issue_asks_for_are_shipped():
    assert {"bifpn_edges", "nasfpn_cells", "scaling"} <= set(SPACES)


@pytest.mark.parametrize("name", SPACES)
def test_shipped_space_validates(edg, name):
    code, out, err = edg("search", "validate", name)
    assert code == 0, err
    assert out.startswith(f"ok  {name}")


def _inputs(lo: int, hi: int, channels: int, in_channels: dict[int, int], size: int) -> list[torch.Tensor]:
    return [torch.randn(1, in_channels.get(k, channels), *level_size(size, k)) for k in range(lo, hi + 1)]


@pytest.mark.parametrize("name", SPACES)
def test_sampled_candidates_are_valid_graphs_or_rejected_with_a_reason(name):
    space = load_space(name)
    rng = random.Random(1234)
    valid = rejected = compiled = 0
    for i in range(1000):
        cand = sample(space, random_ask(rng))
        if cand.rejected:
            assert cand.reason and cand.reason.strip(), f"candidate {i} rejected without a reason"
            rejected += 1
            continue
        valid += 1
        # the candidate's graph reads back through the ordinary spec path
        spec, src = load_spec_text(graph_to_yaml(cand.graph), f"<cand{i}>")
        again = build_graph(spec, src)
        assert sorted(again.edges) == sorted(cand.graph.edges)
        cost = candidate_cost(cand, space.spec.cost)
        assert cost.params > 0 and cost.flops > 0
        if valid % 50 == 1:
            lo, hi = cand.graph.graph["levels"]
            in_ch = {k: c for k, c in space.spec.cost.in_channels.items() if lo <= k <= hi}
            module = compile_graph(cand.stacked(), cand.channels, in_ch)
            assert cost.params == count_params(module), f"candidate {i}: counted params differ from the module's"
            with torch.no_grad():
                outs = module.eval()(*_inputs(lo, hi, cand.channels, in_ch, 64))
            assert [tuple(o.shape) for o in outs] == [(1, cand.channels, *level_size(64, k))
                                                      for k in range(lo, hi + 1)]
            compiled += 1
    assert valid + rejected == 1000 and valid > 0 and compiled >= 1


@pytest.mark.parametrize("point", ["fpn", "panet", "bifpn"])
def test_known_architectures_are_points_of_the_bifpn_edge_space(edg, tmp_path, point):
    out = tmp_path / f"{point}.yaml"
    code, _, err = edg("search", "sample", "bifpn_edges", "--point", point, "-o", out)
    assert code == 0, err
    code, text, err = edg("compare", out, point)
    assert code == 0, text + err
    assert text.startswith("same structure")


def test_points_are_distinct_networks():
    space = load_space("bifpn_edges")
    keys = {sample(space, random_ask(random.Random(0))).key}  # a random one, for contrast
    for p in ("fpn", "panet", "bifpn"):
        from efficientdet_graph.search import point_candidate

        keys.add(point_candidate(space, p).key)
    assert len(keys) == 4


GOOD_SPACE = """\
name: toy
kind: edges
levels: [3, 5]
repeat: 1
params:
  extra: {choices: [true, false]}
choices:
  fusion: [sum, gp]
  op: [sep_conv]
nodes:
  - {id: A, level: 3, inputs: [P3_in, P4_in, P5_in]}
  - {id: B, level: 4, inputs: [P4_in, A]}
  - {id: C, level: 5, inputs: [P5_in, B], optional: [P4_in]}
  - {id: D, level: 5, when: extra, inputs: [C, B]}
outputs: {3: A, 4: B, 5: [D, C]}
points:
  plain:
    params: {extra: false}
    edges: []
    fusion: sum
    op: sep_conv
cost: {channels: 16, image_size: 64, in_channels: {3: 8, 4: 8, 5: 8}}
"""

# (replace this, with that, the message must contain) -- one mistake each
MISTAKES = [
    ("repeat: 1", "repaet: 1", "did you mean 'repeat'"),
    ("inputs: [P5_in, B], optional", "inputs: [P5_in, Bx], optional", "unknown node 'Bx'"),
    ("when: extra", "when: extar", "unknown parameter 'extar' (did you mean 'extra'?)"),
    ("params: {extra: false}", "params: {extra: maybe}", "'maybe' is not one of True, False"),
]


@pytest.mark.parametrize("old,new,message", MISTAKES, ids=["typo_key", "unknown_input", "condition", "point"])
def test_space_mistakes_are_located_errors_and_exit_2(edg, write, old, new, message):
    assert old in GOOD_SPACE
    text = GOOD_SPACE.replace(old, new)
    path = write(text, "space.yaml")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if new in row)
    code, out, err = edg("search", "validate", path)
    assert code == 2
    assert "Traceback" not in err
    located = [row for row in err.splitlines() if row.startswith(f"{path}:{line}:")]
    assert located, f"no error at {path}:{line}: in\n{err}"
    assert any(message in row for row in located), err
    with pytest.raises(SpecError):
        load_space(path)


def test_the_mistake_free_space_validates(edg, write):
    code, out, err = edg("search", "validate", write(GOOD_SPACE, "space.yaml"))
    assert code == 0, err


def test_bad_proxy_key_is_a_located_error_at_run_time(edg, write, tmp_path):
    text = GOOD_SPACE + "proxy: {epochz: 1}\n"
    path = write(text, "space.yaml")
    code, out, err = edg("search", "validate", path)
    assert code == 0, err  # the proxy's fields belong to the proxy stage: checked when a study starts
    code, out, err = edg("search", "run", path, "--trials", "1", "--out", tmp_path / "run", "--quiet")
    assert code == 2 and "Traceback" not in err
    line = len(text.splitlines())
    assert f"{path}:{line}:" in err and "did you mean 'epochs'" in err, err


def test_bad_proxy_flag_exits_2(edg, tmp_path):
    code, out, err = edg("search", "run", "bifpn_edges", "--trials", "1", "--out", tmp_path / "run",
                         "--proxy", "epochz=1", "--quiet")
    assert code == 2 and "did you mean 'epochs'" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- studies


def test_rejected_candidates_are_recorded_and_the_study_finishes(write, study_dir):
    space = write(GOOD_SPACE, "toy.yaml")
    out = study_dir("toy")
    cfg = config(out, space, sampler="random", seed=3, trials=8, seed_points=False)
    result = run(cfg)
    assert result["finished"] == 8
    study, _ = open_study(cfg)
    trials = study.get_trials()
    assert len(trials) == 8
    rejected = [t for t in trials if trial_status(t) == "rejected"]
    done = [t for t in trials if trial_status(t) == "done"]
    assert result["counts"].get("rejected", 0) == len(rejected) >= 1
    assert len(done) >= 1 and len(rejected) + len(done) == 8
    for t in rejected:
        # gp is binary (NAS-FPN): rejected on a node with 3 inputs (A always, C with its optional edge)
        reason = t.user_attrs["edg_reason"]
        node = re.search(r"node '(\w+)'", reason).group(1)
        assert "gp" in reason and t.params[f"fusion.{node}"] == "gp", reason
        assert node == "A" or (node == "C" and t.params["edge.C.P4_in"]), reason
    for t in done:
        assert t.params["fusion.A"] == "sum" and (not t.params["edge.C.P4_in"] or t.params["fusion.C"] == "sum")


def _trace(cfg: StudyConfig) -> list[tuple]:
    study, _ = open_study(cfg)
    return [(t.number, t.state, t.params, t.values, t.user_attrs.get("edg_key"))
            for t in sorted(study.get_trials(), key=lambda t: t.number)]


@pytest.mark.parametrize("sampler,trials", [("random", 4), ("tpe", 10), ("evolution", 7)])
def test_same_seed_same_sampler_same_study(study_dir, sampler, trials):
    kw = dict(sampler=sampler, seed=7, trials=trials, seed_points=False, population=4)
    a, b = config(study_dir("a"), **kw), config(study_dir("b"), **kw)
    run(a)
    run(b)
    ta, tb = _trace(a), _trace(b)
    assert len(ta) == trials
    assert ta == tb
    # and a different seed gives a different study (the comparison can fail)
    c = config(study_dir("c"), **{**kw, "seed": 8, "trials": 3})
    run(c)
    assert [t[2] for t in _trace(c)] != [t[2] for t in ta[:3]]


def test_a_resumed_study_does_not_replay_its_seeds_draws(study_dir):
    """A command that joins or resumes a study with the same --seed must draw new networks:
    a random sampler seeded as at the start re-drew the first trials' networks (found in a
    60-trial study resumed after 24: 35 distinct networks)."""
    cfg = config(study_dir("resume"), sampler="random", seed=0, seed_points=False)

    def draw() -> dict:
        study, space = open_study(cfg)
        trial = study.ask()
        sample(space, optuna_ask(trial))
        return trial.params

    first = draw()
    again = draw()  # the first trial is still running: a second command joins the study
    assert first and again
    assert again != first


@pytest.fixture(scope="module")
def finished_study(proxy_cache, tmp_path_factory):
    """bifpn_edges with its three known points enqueued, BiFPN enqueued a second time,
    and one random trial: 5 trials."""
    out = tmp_path_factory.mktemp("study") / "run"
    shutil.copytree(proxy_cache, out / "proxy-cache")
    cfg = config(out, sampler="random", seed=0, trials=5)
    study, space = open_study(cfg)
    study.enqueue_trial(point_values(space, "bifpn"))
    result = run(cfg)
    return cfg, result


def test_identical_candidates_are_evaluated_once(finished_study):
    cfg, result = finished_study
    study, _ = open_study(cfg)
    trials = {t.number: t for t in study.get_trials()}
    assert [trials[n].user_attrs.get("edg_point") for n in range(3)] == ["fpn", "panet", "bifpn"]
    first, again = trials[2], trials[3]
    assert first.params == again.params
    assert trial_status(first) == "done" and "edg_seconds" in first.user_attrs
    assert trial_status(again) == "reused" and again.user_attrs["edg_reused_from"] == 2
    assert "edg_seconds" not in again.user_attrs  # not trained again
    assert again.values == first.values and again.user_attrs["edg_key"] == first.user_attrs["edg_key"]
    assert result["counts"].get("reused") == 1 and result["finished"] == 5


def test_best_graphs_validate_compile_and_train(finished_study, edg, tmp_path):
    cfg, _ = finished_study
    best = tmp_path / "best"
    code, out, err = edg("search", "best", "--out", cfg.out, "--top", "2", "-o", best)
    assert code == 0, err
    files = sorted(best.glob("*.yaml"))
    assert 1 <= len(files) <= 2 and files[0].name.startswith("01_") and (best / "front.json").is_file()
    code, out, err = edg("validate", *files)
    assert code == 0, err
    for f in files:
        code, out, err = edg("compile", f)
        assert code == 0, err
    code, out, err = edg("train", "micro", "--graph", files[0], "--epochs", "1", "--max-steps", "2",
                         "--data", "synthetic", "--synthetic-train", "16", "--synthetic-val", "8", "--batch-size", "4",
                         "--image-size", "64", "--out", tmp_path / "train", "--quiet")
    assert code == 0, err


def test_status_and_plot(finished_study, edg, tmp_path):
    cfg, result = finished_study
    code, out, err = edg("search", "status", "--out", cfg.out, "--json")
    assert code == 0, err
    import json

    status = json.loads(out)
    assert status["finished"] == 5 and status["counts"] == result["counts"]
    code, out, err = edg("search", "plot", "--out", cfg.out, "-o", tmp_path / "plots")
    assert code == 0, err
    for name in ("pareto.png", "history.png"):
        png = tmp_path / "plots" / name
        assert png.is_file() and png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_study_run_again_with_more_trials_is_extended(study_dir, edg):
    out = study_dir("grow")
    run(config(out, sampler="random", seed=3, trials=2, seed_points=False))
    result = run(config(out, sampler="random", seed=3, trials=3, seed_points=False))
    assert result["finished"] == 3 and result["budget"] == 3
    code, text, err = edg("search", "status", "--out", out, "--json")
    assert code == 0, err
    status = __import__("json").loads(text)
    assert (status["finished"], status["budget"]) == (3, 3)  # the budget it was last run with


def test_status_of_a_missing_study_exits_2(edg, tmp_path):
    code, out, err = edg("search", "status", "--out", tmp_path / "nothing")
    assert code == 2 and "no study" in err


def test_slots_count_retries_in_their_original_slot(finished_study):
    cfg, _ = finished_study
    study, _ = open_study(cfg)
    s = slots(study.get_trials(), 5)
    assert s.finished == 5 and s.open == 0 and not s.surplus
    s = slots(study.get_trials(), 3)
    assert s.finished == 3 and s.surplus == {3, 4}


# ---------------------------------------------------------------------------- report


def test_hypervolume_of_three_points_by_hand():
    # metric up, cost down; reference (metric 0, cost 10). Points (0.5, 2), (0.8, 6), (0.3, 4):
    # (0.3, 4) is dominated by (0.5, 2). Staircase from cost 2 to 6 at height 0.5, from 6
    # to 10 at height 0.8: 0.5 * 4 + 0.8 * 4 = 5.2.
    assert hypervolume([(0.5, 2.0), (0.8, 6.0), (0.3, 4.0)], (0.0, 10.0)) == pytest.approx(5.2)
    # a point outside the reference adds nothing; order does not matter
    assert hypervolume([(0.8, 6.0), (0.9, 11.0), (0.5, 2.0)], (0.0, 10.0)) == pytest.approx(5.2)
    assert hypervolume([], (0.0, 10.0)) == 0.0


def test_hypervolume_agrees_with_optunas():
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    rng = random.Random(5)
    for _ in range(20):
        pts = [(rng.random(), rng.uniform(0, 10)) for _ in range(rng.randint(1, 8))]
        theirs = compute_hypervolume(np.array([(-m, c) for m, c in pts]), np.array([0.0, 10.0]))
        assert hypervolume(pts, (0.0, 10.0)) == pytest.approx(theirs)


def test_storage_urls_in_messages_hide_only_a_password():
    from efficientdet_graph.search.storage import _redacted

    assert _redacted("postgresql://ann:s3cret@db:5432/x") == "postgresql://ann:***@db:5432/x"
    assert _redacted("postgresql://ann@db/x") == "postgresql://ann@db/x"
    assert "s3cret" not in _redacted("postgresql+psycopg2://ann:s3cret@db/x")
