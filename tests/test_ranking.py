"""Rank statistics of search/ranking.py against hand-computed examples and scipy, the
bootstrap interval's resampling, and ``edg search fidelity`` on a hand-made reference file.

Every expected value is worked out in the comments (or taken from scipy), never from the
code under test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from efficientdet_graph.errors import SearchError
from efficientdet_graph.search.ranking import (average_ranks, bootstrap_interval, fidelity, judge, kendall_tau_b,
                                               spearman_rho, top_k_recall)

# ---------------------------------------------------------------------------- tau-b, rho


def test_kendall_tau_b_without_ties_by_hand():
    # x = 1 2 3 4, y = 2 1 4 3; the 6 pairs (i<j):
    # (0,1) y 2>1 D  (0,2) 2<4 C  (0,3) 2<3 C  (1,2) 1<4 C  (1,3) 1<3 C  (2,3) 4>3 D
    # C = 4, D = 2, no ties: (4 - 2) / 6 = 1/3
    assert kendall_tau_b([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(1 / 3)
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_kendall_tau_b_with_ties_by_hand():
    # x = 1 2 2 3 3, y = 1 3 2 2 4; the 10 pairs:
    # (0,1) C (0,2) C (0,3) C (0,4) C  (1,2) x tie  (1,3) x up, y 3->2 D  (1,4) C
    # (2,3) y tie  (2,4) C  (3,4) x tie
    # C = 6, D = 1, ties_x = 2, ties_y = 1: (6 - 1) / sqrt((10 - 2)(10 - 1)) = 5 / sqrt(72)
    assert kendall_tau_b([1, 2, 2, 3, 3], [1, 3, 2, 2, 4]) == pytest.approx(5 / math.sqrt(72))
    # a pair tied on both sides counts in both tie terms: x = 1 1 2, y = 5 5 6
    # (0,1) tie both, (0,2) C, (1,2) C: (2 - 0) / sqrt((3 - 1)(3 - 1)) = 1
    assert kendall_tau_b([1, 1, 2], [5, 5, 6]) == pytest.approx(1.0)
    assert math.isnan(kendall_tau_b([2, 2, 2], [1, 2, 3]))  # a constant side orders no pair


def test_spearman_rho_by_hand():
    # no ties: ranks = values, d = -1 1 -1 1, 1 - 6 * 4 / (4 * (16 - 1)) = 0.6
    assert spearman_rho([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    # ties: x = 1 2 2 3 -> ranks 1 2.5 2.5 4; y ranks 1 2 3 4; both means 2.5
    # centred: (-1.5 0 0 1.5) and (-1.5 -0.5 0.5 1.5): sum of products 4.5,
    # sums of squares 4.5 and 5: 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman_rho([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    assert math.isnan(spearman_rho([1, 2, 3], [7, 7, 7]))


def test_average_ranks_share_the_ranks_they_span():
    # sorted 5 10 20 20: 5 -> 1, 10 -> 2, the two 20s span ranks 3 and 4 -> 3.5
    assert list(average_ranks([10, 20, 20, 5])) == [2, 3.5, 3.5, 1]


def test_tau_and_rho_equal_scipy_on_random_data_with_ties():
    rng = np.random.default_rng(7)
    compared = 0
    for _ in range(300):
        n = int(rng.integers(2, 16))
        # few distinct values: ties on both sides most of the time; floats half of the time
        x = rng.integers(0, 5, n) if rng.random() < 0.5 else rng.normal(size=n).round(1)
        y = rng.integers(0, 5, n)
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue  # undefined: checked by hand above (scipy warns and returns NaN)
        assert kendall_tau_b(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)
        assert spearman_rho(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
        compared += 1
    assert compared > 200


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        kendall_tau_b([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        spearman_rho([1, float("nan"), 3], [1, 2, 3])  # a NaN would be neither tied nor ordered
    with pytest.raises(ValueError):
        top_k_recall([1, 2], [1, 2], k=3)


# ---------------------------------------------------------------------------- top-k recall


def test_top_k_recall_by_hand():
    # top 3 by score: items 0 1 2 (0.9 0.8 0.7); by truth: items 0 2 3 (5 4 3): {0, 2} -> 2/3
    assert top_k_recall([0.9, 0.8, 0.7, 0.1, 0.2], [5, 1, 4, 3, 2], k=3) == pytest.approx(2 / 3)
    assert top_k_recall([1, 2, 3, 4], [1, 2, 3, 4], k=3) == pytest.approx(1.0)
    assert top_k_recall([4, 3, 2, 1], [1, 2, 3, 4], k=2) == pytest.approx(0.0)


def test_top_k_recall_ties_at_the_boundary_are_the_mean_over_tie_breaks():
    # scores 3 2 2 2 1, k = 2: item 0 is in; one place for three tied items. The three
    # equally likely top-2 sets {0,1} {0,2} {0,3} meet the truth's {0,1} in 2, 1, 1 items:
    # recall (1 + 1/2 + 1/2) / 3 = 2/3, whatever order the items are listed in
    assert top_k_recall([3, 2, 2, 2, 1], [5, 4, 3, 2, 1], k=2) == pytest.approx(2 / 3)
    assert top_k_recall([1, 2, 2, 3, 2], [1, 3, 2, 5, 4], k=2) == pytest.approx(2 / 3)  # the same, permuted
    # a ranking that ties everything does as well as a random pick: k / n = 2/4
    assert top_k_recall([7, 7, 7, 7], [1, 2, 3, 4], k=2) == pytest.approx(0.5)


# ---------------------------------------------------------------------------- bootstrap


def _noisy(n: int = 8, seed: int = 3) -> tuple[np.ndarray, list[list[float]]]:
    rng = np.random.default_rng(seed)
    truth = np.linspace(0.2, 0.5, n)
    seeds = [list(t + rng.normal(0, 0.02, 3)) for t in truth]
    return truth + rng.normal(0, 0.05, n), seeds


def test_bootstrap_interval_contains_the_estimate_and_is_deterministic():
    scores, seeds = _noisy()
    means = [float(np.mean(s)) for s in seeds]
    a = bootstrap_interval(scores, seeds, n_boot=500, seed=1)
    b = bootstrap_interval(scores, seeds, n_boot=500, seed=1)
    c = bootstrap_interval(scores, seeds, n_boot=500, seed=2)
    assert a == b
    assert a["tau"] != c["tau"]
    lo, hi = a["tau"]
    assert lo < kendall_tau_b(scores, means) < hi
    lo, hi = a["rho"]
    assert lo < spearman_rho(scores, means) < hi


def test_bootstrap_interval_collapses_without_noise_and_disagreement():
    # identical seeds and a perfectly concordant ranking: every resample has tau = rho = 1
    # (a network drawn twice ties on both sides, which tau-b and average ranks leave out)
    seeds = [[0.1, 0.1], [0.2, 0.2, 0.2], [0.3], [0.4, 0.4], [0.5, 0.5]]
    out = bootstrap_interval([1, 2, 3, 4, 5], seeds, n_boot=300)
    assert out["tau"] == [1.0, 1.0] and out["rho"] == [1.0, 1.0]
    # the same networks ranked with one swap: resampling the networks alone now spreads it
    out = bootstrap_interval([1, 2, 4, 3, 5], seeds, n_boot=300)
    assert out["tau"][0] < out["tau"][1]


def test_bootstrap_resamples_networks_with_replacement_and_each_ones_seeds():
    # two networks, scores 0 < 1. Networks drawn with replacement: half of the resamples draw
    # one network twice (tau undefined): expect 1000 of 2000 (binomial SD 22).
    # Seeds: network A's are 0.0 and 1.0, B's 0.6 and 0.6. A resampled mean is 0, 0.5 or 1
    # with probability 1/4, 1/2, 1/4; tau = +1 unless it is 1 (> 0.6): +1 with 3/4, -1 with
    # 1/4, so the 5% quantile is -1 and the 95% quantile +1. Without seed resampling A's
    # mean would always be 0.5 and the interval [1, 1].
    out = bootstrap_interval([0.0, 1.0], [[0.0, 1.0], [0.6, 0.6]], n_boot=2000, seed=0)
    assert 900 < out["undefined"]["tau"] < 1100
    assert out["tau"] == [-1.0, 1.0]


# ---------------------------------------------------------------------------- fidelity, judge

# five networks, truth a < b < c < d < e (seed means 0.11 0.21 0.30 0.405 0.51)
SEEDS = {"a": [0.10, 0.12], "b": [0.20, 0.22], "c": [0.31, 0.29], "d": [0.40, 0.41], "e": [0.52, 0.50]}
# feature-network FLOPs in truth order 500 100 400 200 300: of the 10 pairs, increasing
# (C): 100<400 100<200 100<300 200<300 = 4, the other 6 D: tau (4 - 6) / 10 = -0.2
FLOPS = {"a": 500, "b": 100, "c": 400, "d": 200, "e": 300}
# parameters 50 40 10 30 20: C only 10<30 10<20: (2 - 8) / 10 = -0.6
PARAMS = {"a": 50, "b": 40, "c": 10, "d": 30, "e": 20}


def _table(params: dict | None = None) -> list[dict]:
    params = params or PARAMS
    return [{"network": n, "seeds": list(range(len(v))), "flops": 10 * FLOPS[n], "params": 10 * params[n],
             "fpn_flops": FLOPS[n], "fpn_params": params[n],
             "val": {"mean": float(np.mean(v)), "values": v}, "test": {"mean": float(np.mean(v)), "values": v}}
            for n, v in SEEDS.items()]


def test_fidelity_ranks_against_seed_means_beside_the_priors():
    truth = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    result = fidelity(_table(), truth, n_boot=200)
    assert result["n"] == 5 and result["networks"] == ["a", "b", "c", "d", "e"]
    proxy, flops, params = (result["rankings"][r] for r in ("proxy", "flops", "params"))
    assert proxy["tau"] == pytest.approx(1.0) and proxy["rho"] == pytest.approx(1.0)
    assert proxy["top_k_recall"] == pytest.approx(1.0)
    assert flops["tau"] == pytest.approx(-0.2)
    assert params["tau"] == pytest.approx(-0.6)
    # top 3 by FLOPs: a c e; truth's top 3: c d e -> 2/3. By params: a b d -> {d}: 1/3
    assert flops["top_k_recall"] == pytest.approx(2 / 3)
    assert params["top_k_recall"] == pytest.approx(1 / 3)
    assert judge(result)["passed"] is True
    reversed_ = judge(fidelity(_table(), {n: -s for n, s in truth.items()}, n_boot=200))
    assert reversed_["passed"] is False and len(reversed_["reasons"]) == 4  # tau, bound, FLOPs, params


def test_fidelity_only_on_the_scored_networks_and_refuses_what_the_table_lacks():
    result = fidelity(_table(), {"a": 0, "b": 1, "c": 3, "d": 2}, n_boot=50)
    # a b c d with truth order a b c d and scores 0 1 3 2: one discordant pair of 6
    assert result["n"] == 4 and result["rankings"]["proxy"]["tau"] == pytest.approx(4 / 6)
    with pytest.raises(SearchError, match="zz"):
        fidelity(_table(), {"a": 0, "b": 1, "c": 2, "zz": 3})
    with pytest.raises(SearchError, match="at least 4"):
        fidelity(_table(), {"a": 0, "b": 1, "c": 2})


def test_judge_needs_tau_strictly_above_both_priors():
    def result(proxy: float, low: float, flops: float, params: float) -> dict:
        return {"rankings": {"proxy": {"tau": proxy, "tau_interval": [low, 1.0]}, "flops": {"tau": flops},
                             "params": {"tau": params}}}

    assert judge(result(0.7, 0.3, 0.69, 0.1))["passed"] is True  # the bar exactly: tau 0.6+, bound 0.3
    tie = judge(result(0.7, 0.4, 0.7, 0.1))  # only as good as FLOPs-only: not worth training
    assert tie["passed"] is False and tie["reasons"] == ["tau 0.700 does not beat flops-only (0.700)"]
    assert judge(result(0.59, 0.4, 0.0, 0.0))["reasons"] == ["tau 0.590 < 0.6"]
    assert judge(result(0.7, 0.29, 0.0, 0.0))["reasons"] == ["the interval's lower bound 0.290 < 0.3"]
    assert len(judge(result(float("nan"), float("nan"), 0.0, 0.0))["reasons"]) == 4  # NaN fails every test


def test_judge_counts_an_all_tied_prior_as_ordering_nothing():
    # every network the same size: params-only is undefined (NaN) and counts as tau 0
    result = fidelity(_table({n: 7 for n in SEEDS}), {n: i for i, n in enumerate(SEEDS)}, n_boot=100)
    assert math.isnan(result["rankings"]["params"]["tau"])
    assert judge(result)["passed"] is True
    # FLOPs-only can never beat itself
    assert judge(result, "flops")["passed"] is False


# ---------------------------------------------------------------------------- the command


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "reference.json"
    # the runs as the reference build writes them; their mAP (unlike mAP@0.5) ranks the networks backwards
    runs = [{"network": n, "key": n, "source": "graph", "repeat": 2, "seed": i, "fpn_flops": FLOPS[n],
             "fpn_params": PARAMS[n], "val": {"map50": v, "map": 1 - v}, "test": {"map50": v, "map": 1 - v}}
            for n, vs in SEEDS.items() for i, v in enumerate(vs)]
    path.write_text(json.dumps({"table": _table(), "runs": runs}))
    return path


def _scores(tmp_path: Path, name: str, scores: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(scores))
    return path


def test_command_passes_a_perfect_ranking_and_writes_its_results(edg, tmp_path, reference):
    good = _scores(tmp_path, "good.json", {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5})
    out = tmp_path / "fidelity.json"
    code, stdout, stderr = edg("search", "fidelity", reference, "--scores", good, "--results", out, "--n-boot", "300")
    assert code == 0, stdout + stderr
    assert "PASS" in stdout and "FLOPs only" in stdout and "params only" in stdout
    doc = json.loads(out.read_text())
    assert doc["verdict"]["passed"] is True and doc["command"].startswith("edg search fidelity")
    assert {"date", "versions", "machine"} <= set(doc)
    assert doc["fidelity"]["rankings"]["flops"]["tau"] == pytest.approx(-0.2)


def test_command_fails_a_reversed_ranking(edg, tmp_path, reference):
    bad = _scores(tmp_path, "bad.json", {"a": 0.5, "b": 0.4, "c": 0.3, "d": 0.2, "e": 0.1})
    code, stdout, _ = edg("search", "fidelity", reference, "--scores", bad, "--n-boot", "100")
    assert code == 1 and "FAIL" in stdout
    code, _, _ = edg("search", "fidelity", reference, "--by", "flops", "--n-boot", "100")
    assert code == 1
    # the perfect mAP@0.5 ranking is the reversed one for mAP (summarized from the runs)
    good = _scores(tmp_path, "good.json", {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5})
    code, stdout, _ = edg("search", "fidelity", reference, "--scores", good, "--metric", "map", "--n-boot", "100")
    assert code == 1 and "-1.000" in stdout


@pytest.mark.parametrize("case", ["unknown network", "missing file", "not a number", "too few"])
def test_command_exits_2_on_bad_input(edg, tmp_path, reference, case):
    scores = {"unknown network": {"a": 1, "b": 2, "c": 3, "zz": 4}, "not a number": {"a": "high", "b": 2},
              "too few": {"a": 1, "b": 2, "c": 3}}.get(case)
    path = _scores(tmp_path, "s.json", scores) if scores else tmp_path / "absent.json"
    code, stdout, stderr = edg("search", "fidelity", reference, "--scores", path)
    assert code == 2 and stderr.startswith("error: ") and "Traceback" not in stderr
    assert {"unknown network": "zz", "missing file": "no such file", "not a number": "'a'",
            "too few": "at least 4"}[case] in stderr


def test_the_statistics_module_imports_no_torch():
    code = "import sys, efficientdet_graph.search.ranking; print(sorted({'torch', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
