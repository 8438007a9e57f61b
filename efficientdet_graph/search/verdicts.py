"""Win, tie or loss of a network against a baseline, judged on seeds.

A found network "beats" a baseline only where the gap between their seed means exceeds
both seed ranges (max - min over seeds): a gap inside either network's own seed spread
is what re-training with another seed could reverse, so it is a tie. The same rule,
mirrored, calls a loss. Fewer than two seeds on a side has no range, so no verdict.
"""

from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence

__all__ = ["MATCH_WAYS", "seed_verdict", "matched_verdicts", "verdicts_markdown"]

#: the ways a baseline is matched: the knob turned (depth repeats it, width widens it) and,
#: with ``detector-``, the whole detector's FLOPs held equal instead of the feature
#: network's -- widening a baseline widens its class and box heads too, so a
#: feature-network match by width hands the baseline a costlier detector
MATCH_WAYS = ("depth", "width", "detector-depth", "detector-width")


def seed_verdict(found: Sequence[float], baseline: Sequence[float]) -> dict:
    """``outcome`` (win / tie / loss / undecided) of ``found`` against ``baseline``, with the
    gap of the means and each side's seed range."""
    found, baseline = [float(x) for x in found], [float(x) for x in baseline]
    out = {"found_mean": statistics.fmean(found) if found else math.nan,
           "baseline_mean": statistics.fmean(baseline) if baseline else math.nan,
           "found_range": max(found) - min(found) if found else math.nan,
           "baseline_range": max(baseline) - min(baseline) if baseline else math.nan,
           "found_seeds": len(found), "baseline_seeds": len(baseline)}
    out["gap"] = out["found_mean"] - out["baseline_mean"]
    if len(found) < 2 or len(baseline) < 2:
        return {**out, "outcome": "undecided", "reason": "needs at least 2 seeds on each side"}
    bar = max(out["found_range"], out["baseline_range"])
    out["bar"] = bar
    out["outcome"] = "win" if out["gap"] > bar else "loss" if -out["gap"] > bar else "tie"
    return out


def matched_verdicts(table: Sequence[Mapping], pairs: Mapping[str, Mapping[str, Sequence[str]]],
                     split: str = "test", names: Mapping[str, str] | None = None) -> list[dict]:
    """For each found network and each baseline matched to it (``pairs``: network key ->
    baseline key -> the ``MATCH_WAYS`` it was matched by), the verdict on ``split``, with
    both sides' detector and feature-network FLOPs. ``table`` rows as
    ``reference.summarize`` writes them; a network not trained yet is ``undecided``, named
    by ``names`` (key -> name) while it has no row."""
    rows = {r["key"]: r for r in table}

    def name(key: str) -> str:
        return rows[key]["network"] if key in rows else (names or {}).get(key, key)

    out = []
    for found, baselines in pairs.items():
        for base in baselines:
            label = {"found": name(found), "baseline": name(base), "matched_by": ", ".join(baselines[base]),
                     "split": split}
            for side, key in (("found", found), ("baseline", base)):
                if key in rows:
                    label.update({f"{side}_flops": rows[key].get("flops"),
                                  f"{side}_fpn_flops": rows[key].get("fpn_flops")})
            if found not in rows or base not in rows:
                out.append({**label, "outcome": "undecided", "reason": "not trained yet"})
                continue
            out.append({**label, **seed_verdict(rows[found][split]["values"], rows[base][split]["values"])})
    return out


def _f(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _mflops(v: Mapping, side: str) -> str:
    f = v.get(f"{side}_flops")
    return "–" if f is None else f"{f / 1e6:.1f}"


def verdicts_markdown(verdicts: Sequence[Mapping]) -> str:
    if not verdicts:
        return ""
    lines = ["", "Found networks against their FLOPs-matched baselines (a win or a loss only where the gap of "
                 "the seed means exceeds both seed ranges). Matched by: the knob turned (depth, width) and, "
                 "with detector-, the whole detector's FLOPs held equal instead of the feature network's; "
                 "MFLOPs: the whole detector's, found / baseline:", "",
             "| found | baseline | matched by | MFLOPs | split | seeds | found mean (range) | baseline mean (range) "
             "| gap | outcome |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        seeds = f"{v['found_seeds']} / {v['baseline_seeds']}" if "found_seeds" in v else "–"
        lines.append(f"| {v['found']} | {v['baseline']} | {v.get('matched_by', '')} | {_mflops(v, 'found')} / "
                     f"{_mflops(v, 'baseline')} | {v['split']} | {seeds} | {_f(v.get('found_mean', math.nan))} "
                     f"({_f(v.get('found_range', math.nan))}) | {_f(v.get('baseline_mean', math.nan))} "
                     f"({_f(v.get('baseline_range', math.nan))}) | {_f(v.get('gap', math.nan))} | "
                     f"{v['outcome']} |")
    return "\n".join(lines) + "\n"
