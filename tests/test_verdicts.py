"""Win / tie / loss on seeds: hand-computed examples of the rule "the gap of the means
exceeds both seed ranges"."""

from __future__ import annotations

import math

import pytest

from efficientdet_graph.search.verdicts import matched_verdicts, seed_verdict, verdicts_markdown


def test_a_gap_beyond_both_ranges_is_a_win_and_mirrored_a_loss():
    # means 0.90 and 0.80: gap 0.10; ranges 0.04 and 0.02 -> win
    v = seed_verdict([0.88, 0.90, 0.92], [0.79, 0.80, 0.81])
    assert v["gap"] == pytest.approx(0.10) and v["found_range"] == pytest.approx(0.04)
    assert v["baseline_range"] == pytest.approx(0.02) and v["outcome"] == "win"
    assert seed_verdict([0.79, 0.80, 0.81], [0.88, 0.90, 0.92])["outcome"] == "loss"


def test_a_gap_inside_either_seed_range_is_a_tie():
    # gap 0.02 (0.85 - 0.83) beats the baseline's range 0.01 but not the found one's 0.06
    v = seed_verdict([0.82, 0.85, 0.88], [0.825, 0.83, 0.835])
    assert v["gap"] == pytest.approx(0.02) and v["bar"] == pytest.approx(0.06) and v["outcome"] == "tie"
    # and the other way round: the baseline's range decides
    assert seed_verdict([0.849, 0.85, 0.851], [0.80, 0.83, 0.86])["outcome"] == "tie"
    # a gap exactly equal to the range does not exceed it
    assert seed_verdict([0.5, 1.0], [0.0, 0.5])["outcome"] == "tie"  # binary-exact: gap 0.5, ranges 0.5


def test_one_seed_has_no_range_so_no_verdict():
    v = seed_verdict([0.95], [0.50, 0.51])
    assert v["outcome"] == "undecided" and math.isnan(v["found_range"]) is False and v["found_seeds"] == 1


def test_matched_verdicts_pair_found_networks_with_their_baselines_by_key():
    table = [{"network": "found", "key": "k1", "test": {"values": [0.9, 0.91, 0.92]}, "flops": 53_100_000},
             {"network": "bifpn:3", "key": "k2", "test": {"values": [0.80, 0.81, 0.82]}, "flops": 55_000_000},
             {"network": "fpn@64", "key": "k3", "test": {"values": [0.90, 0.93, 0.96]}}]
    pairs = {"k1": {"k2": ["depth", "detector-depth"], "k3": ["width"], "k4": ["depth"]}}
    got = matched_verdicts(table, pairs, names={"k4": "panet:2", "k2": "not used"})
    # a network not trained yet is named by the command's names; a trained one by its row
    assert [(v["baseline"], v["outcome"]) for v in got] == [("bifpn:3", "win"), ("fpn@64", "tie"),
                                                           ("panet:2", "undecided")]
    assert matched_verdicts(table, {"k1": {"k4": ["width"]}})[0]["baseline"] == "k4"  # no name known: its key
    md = verdicts_markdown(got)
    # one baseline matched two ways is one verdict; each side's whole-detector MFLOPs beside it
    assert ("| found | bifpn:3 | depth, detector-depth | 53.1 / 55.0 | test | 3 / 3 | 0.910 (0.020) | "
            "0.810 (0.020) | 0.100 | win |") in md
    assert "| found | panet:2 | depth | 53.1 / – | test | – |" in md
