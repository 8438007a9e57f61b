"""The reference table as a results file: every seed's figures, the table, the gate."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from .._io import atomic_write_text
from .compare import provenance
from .verdicts import verdicts_markdown

__all__ = ["write_reference_results", "markdown_table"]


def _clean(x):
    """JSON without NaN (a one-seed SD is undefined: null)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _f(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def markdown_table(table: Sequence[dict], verdict: dict) -> str:
    lines = ["| network | source | seeds | search-val mAP@0.5 mean (SD, range) | test mAP@0.5 mean (range) "
             "| feature-net FLOPs | feature-net params | model FLOPs | job time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in table:
        v, t = s["val"], s["test"]
        lines.append(f"| {s['network']} | {s['source']} | {len(s['seeds'])} | {_f(v['mean'])} ({_f(v['sd'])}, "
                     f"{_f(v['min'])}–{_f(v['max'])}) | {_f(t['mean'])} ({_f(t['min'])}–{_f(t['max'])}) "
                     f"| {s['fpn_flops'] or 0:,} | {s['fpn_params'] or 0:,} | {s['flops'] or 0:,} "
                     f"| {_f(s['wall_s']['mean'], 0)} |")
    g = verdict
    if g.get("passed") is None:
        lines += ["", f"Gate: not decided ({g.get('reason', 'no floor networks')})."]
    else:
        lines += ["", f"Gate ({'passed' if g['passed'] else 'FAILED'}): pooled seed SD {_f(g['pooled_sd'], 4)}; "
                      f"{g['floor'][0]} is below the best-worst fusing network by {_f(g['margin'])} "
                      f"= {_f(g['margin_in_sd'], 1)} SD (needs > {g['worst_by_sd']}); the fusing networks spread "
                      f"{_f(g['spread'])} = {_f(g['spread_in_sd'], 1)} SD (needs > {g['spread_by_sd']})."]
    return "\n".join(lines) + "\n"


def per_class_table(table: Sequence[dict], rows: Sequence[dict]) -> str:
    """Search-val AP@0.5 of each class, mean over a network's seeds: which classes a neck
    learns (a context class at chance shows here, not in the mean)."""
    classes: list[str] = []
    for r in rows:
        classes += [k for k in r.get("val", {}) if k.startswith("ap50/") and k not in classes]
    if not classes:
        return ""
    lines = ["| network | " + " | ".join(c.removeprefix("ap50/") for c in classes) + " |",
             "|---|" + "---|" * len(classes)]
    for s in table:
        mine = [r["val"] for r in rows if r.get("key", r["network"]) == s.get("key", s["network"])]
        cells = [statistics.fmean(v[c] for v in mine if c in v) if any(c in v for v in mine) else None for c in classes]
        lines.append(f"| {s['network']} | " + " | ".join(_f(c, 2) for c in cells) + " |")
    return "\n".join(["", "Search-val AP@0.5 per class (mean over seeds):", "", *lines]) + "\n"


def _task(data: str) -> dict:
    """The data folder and what is in each split (images, objects, classes)."""
    out: dict = {"data": str(data), "splits": {}}
    for split in ("train", "val", "test"):
        path = Path(data) / split / "annotations.json"
        if path.is_file():
            coco = json.loads(path.read_text())
            out["splits"][split] = {"images": len(coco["images"]), "objects": len(coco["annotations"]),
                                    "classes": [c["name"] for c in coco["categories"]]}
    return out


def _splits_agree(table: Sequence[dict]) -> dict:
    """Does the test split order the networks as search-val does: Kendall tau-b of the seed
    means, and the largest gap between a network's two means."""
    from .ranking import kendall_tau_b

    both = [s for s in table if s["val"]["n"] and s["test"]["n"]]
    if len(both) < 2:
        return {"networks": len(both), "kendall_tau": None, "max_mean_gap": None}
    return {"networks": len(both),
            "kendall_tau": kendall_tau_b([s["val"]["mean"] for s in both], [s["test"]["mean"] for s in both]),
            "max_mean_gap": max(abs(s["val"]["mean"] - s["test"]["mean"]) for s in both)}


def write_reference_results(path: str | Path, build, rows: list[dict], table: list[dict], verdict: dict,
                            counts: dict, verdicts: Sequence[dict] = ()) -> Path:
    """The results file (JSON) and its .md table; ``verdicts``: found networks against their
    matched baselines (``verdicts.matched_verdicts``), kept and shown where there are any."""
    walls = [r["wall_s"] for r in rows if "wall_s" in r]
    # a resumed job's cost is its attempts' sum where they recorded it (a SIGKILLed attempt cannot)
    spent = [r.get("wall_s_all_attempts", r["wall_s"]) for r in rows if "wall_s" in r]
    doc = {
        **provenance(),
        # backbone_init: what a proxy calibrated on this table freezes (edg search fidelity --proxy)
        "task": {**_task(build.data), "backbone_init": str(build.backbone_path() or "") or None},
        "schedule": asdict(build.schedule),
        "jobs": counts,  # this command's jobs by status, one per attempt, as "cost" counts them
        "cost": {"jobs_done": len(walls), "median_job_s": statistics.median(walls) if walls else None,
                 "total_job_s": round(sum(spent), 1), "threads_per_job": build.schedule.threads,
                 # retried after a lost attempt, or stopped (SIGTERM, Ctrl-C) and resumed
                 "resumed_jobs": sum(1 for r in rows if r.get("attempt", 1) > 1 or "wall_s_all_attempts" in r)},
        "gate": verdict,
        "splits_agree": _splits_agree(table),
        "table": table,
        **({"verdicts": list(verdicts)} if verdicts else {}),
        "runs": [{k: v for k, v in r.items() if k != "graph_yaml"} for r in rows],  # the table holds each graph
        "failed": [{"key": t.user_attrs.get("edg_key"), "reason": t.user_attrs.get("edg_reason")}
                   for t in build.queue.failed()],
    }
    path = Path(path)
    atomic_write_text(path, json.dumps(_clean(doc), indent=1) + "\n")
    atomic_write_text(path.with_suffix(".md"), markdown_table(table, verdict) + verdicts_markdown(verdicts)
                      + per_class_table(table, rows))
    return path
