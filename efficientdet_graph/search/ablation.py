"""``edg ablation``: several feature graphs in one detector, each trained with one or
more seeds, at the spec's width and depth or at matched feature-network FLOPs.

One seed decides nothing when seed noise is as large as the gaps between graphs (issue
17), so each graph gets the mean, sample SD and range of its seeds' figures, on the
validation split (what tuning sees) and, where the data folder has one, on the test split
(for final claims). Equal width is not equal cost: ``--match flops`` scales every graph to
the first graph's feature-network FLOPs by changing its repeat first (the paper's
ablation), ``--match width`` by changing its width first.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from .._io import atomic_write_text
from ..errors import ConfigError

__all__ = ["MATCHES", "Scale", "plan_scales", "run_dir", "final_record", "check_resumable", "run_one", "profile_run",
           "has_test_split", "scored_on_test", "graph_rows", "table_markdown", "seed_noise"]

MATCHES = ("none", "flops", "width")


@dataclass(frozen=True)
class Scale:
    """A graph's feature-network depth and width in the ablation, and its FLOPs (analytic
    count, multiply-adds) against the first graph's."""

    graph: str
    repeat: int
    channels: int
    fpn_flops: int
    diff_pct: float
    within: bool  # inside the tolerance (always True without matching)


def _widths(base: int) -> list[int]:
    # fine steps at small widths: at 16 channels, steps of 8 would move the cost by ~50%
    step = max(1, base // 16)
    return sorted({base, *range(step, 4 * base + 1, step)})


def plan_scales(model: str, graphs: Sequence[str], match: str = "none", tolerance: float = 0.10,
                image_size: int | None = None) -> list[Scale]:
    """Each graph's (repeat, width) in ``model``: the spec's (``match="none"``), or the one
    whose feature-network FLOPs are nearest the first graph's, repeat changed first
    (``"flops"``) or width first (``"width"``), as ``search.compare.matched_scale`` picks it."""
    from ..profile import graph_cost
    from ..profile.analytic import feature_inputs
    from .compare import matched_scale

    if match not in MATCHES:
        raise ConfigError(f"--match must be one of {', '.join(MATCHES)}, got {match!r}")
    inputs = [feature_inputs(model, image_size, graph=g) for g in graphs]
    counts = [graph_cost(f.graph, f.channels, f.in_channels, f.image_size).flops for f in inputs]
    target = counts[0]
    scales = []
    for i, (g, f) in enumerate(zip(graphs, inputs)):
        repeat, channels, flops = f.graph.graph.get("repeat", 1), f.channels, counts[i]
        if match != "none" and i > 0:
            repeat, channels, flops = matched_scale(
                f.graph, target, SimpleNamespace(image_size=f.image_size), f.in_channels, base_repeat=repeat,
                base_channels=channels, max_repeat=max(8, 2 * repeat), widths=_widths(channels),
                tolerance=tolerance, match="depth" if match == "flops" else "width")
        diff = 100.0 * (flops - target) / target if target else 0.0
        scales.append(Scale(g, repeat, channels, int(flops), diff, match == "none" or abs(diff) <= 100 * tolerance))
    return scales


def run_dir(out: Path, graph: str, seed: int, per_seed: bool) -> Path:
    """``OUT/GRAPH/seed-S``; ``OUT/GRAPH`` for the one-seed run without ``--seeds`` (the
    layout ``make ablation`` and its results file have always had)."""
    return Path(out) / graph / f"seed-{seed}" if per_seed else Path(out) / graph


def final_record(run: Path, epochs: int) -> dict | None:
    """The metrics line of a run's last epoch (its validation figures), when the run has
    its checkpoint and got there; ``None`` for a run not started, stopped, or shorter."""
    from ..train.progress import MetricsLog

    if not (run / "last.pt").exists():
        return None
    ends = [r for r in MetricsLog(run / "metrics.jsonl").read() if r.get("type") == "epoch" and r.get("epoch") == epochs]
    return ends[-1] if ends else None


def check_resumable(run: Path, graph: str, scale: Scale) -> int:
    """A checkpoint that ``--resume`` would continue must be of this graph at this scale:
    resuming rebuilds the model from the checkpoint, so another one would be trained on
    silently under the new row's name. Returns the epochs it has finished."""
    from ..model.checkpoint import read_checkpoint

    ckpt = read_checkpoint(run / "last.pt")
    spec = ckpt.get("spec", {}) if isinstance(ckpt, dict) else {}
    config = ckpt.get("train_state", {}).get("config", {}) if isinstance(ckpt, dict) else {}
    was = (config.get("graph"), spec.get("fpn_repeat"), spec.get("fpn_channels"))
    want = (graph, scale.repeat, scale.channels)
    if was != want:
        raise ConfigError(f"{run / 'last.pt'} holds graph {was[0]} at repeat {was[1]}, width {was[2]}; this ablation "
                          f"trains {want[0]} at repeat {want[1]}, width {want[2]}: give another --out, or leave out "
                          "--resume to train it anew")
    return int(ckpt.get("train_state", {}).get("epoch", 0))


def scored_on_test(run: Path, data: str, step: int, batch_size: int, device: str) -> dict:
    """The final (EMA) checkpoint's COCO metrics on the data folder's test split, kept in
    ``RUN/test.json`` for the checkpoint's step so that a resumed ablation does not
    evaluate again (``run_one`` removes it before it trains)."""
    from ..model import load_model
    from ..train.evaluate import evaluate

    cache = run / "test.json"
    if cache.exists():
        try:
            kept = json.loads(cache.read_text())
            if kept.get("step") == step:
                return kept["metrics"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # unreadable: evaluate again
    metrics = evaluate(load_model(run / "last.pt"), data, batch_size, device, split="test")
    atomic_write_text(cache, json.dumps({"step": step, "metrics": metrics}, indent=2))
    return metrics


def run_one(cfg: Any, scale: Scale, with_test: bool, device: str, say: Callable[[str], None] = print) -> dict:
    """Train (or, with ``cfg.resume``, read back or continue) one (graph, seed) in
    ``cfg.out``: its final validation figures, test-split figures where ``with_test``, and
    its training speed; ``{"interrupted": SIGNAL}`` when a signal stopped it. ``scale``:
    the repeat and width its network has (``cfg`` trains it at that scale)."""
    from dataclasses import replace

    from ..train.loop import train

    run = Path(cfg.out)
    end = None
    if cfg.resume and (run / "last.pt").exists():
        done = check_resumable(run, cfg.graph, scale)
        end = final_record(run, cfg.epochs)
        if end is None and done >= cfg.epochs:
            # killed after its last checkpoint, before its final evaluation was logged: resuming
            # would train nothing and evaluate nothing, so this one run is trained anew
            say(f"{run}: its last epoch's evaluation is missing; training it anew")
            cfg = replace(cfg, resume=False)
    if end is not None:
        say(f"== {cfg.graph}, seed {cfg.seed}: finished before ({run}); not trained again")
    else:
        say(f"== {cfg.graph}, seed {cfg.seed} (repeat {scale.repeat}, width {scale.channels})")
        (run / "test.json").unlink(missing_ok=True)  # another network's test figures, at the same step
        summary = train(cfg)  # TrainingDiverged: the CLI prints it and exits 1
        if "interrupted" in summary:
            return {"interrupted": summary["interrupted"]}
        end = final_record(run, cfg.epochs) or {}  # {}: stopped early by max_steps, no final figures
    test = {}
    if with_test and end:
        metrics = scored_on_test(run, cfg.data, end["step"], cfg.batch_size, device)
        test = {k: metrics[k] for k in ("map", "map50", "map75") if k in metrics}
    return {"graph": cfg.graph, "seed": cfg.seed, "dir": str(run), "test": test,
            "val": {k: end[k] for k in ("map", "map50", "map75") if k in end}, "img_per_s": end.get("img_per_s")}


def profile_run(run: Path) -> dict:
    """Scale and counts of the network a run trained (torch's counter on its checkpoint)."""
    from ..model import load_model
    from ..profile import profile_model

    model = load_model(run / "last.pt")
    prof = profile_model(model)
    return {"repeat": model.spec.fpn_repeat, "channels": model.spec.fpn_channels, "params": prof.params,
            "fpn_params": prof.components["fpn"]["params"], "flops": prof.flops,
            "fpn_flops": prof.components["fpn"]["flops"]}


def has_test_split(data: str | Path) -> bool:
    """The data folder has its own test split (not the single-file layout every split
    would fall back to)."""
    root = Path(data)
    return (root / "test" / "annotations.json").is_file() or (root / "annotations" / "instances_test.json").is_file()


def _finite(x: Any) -> Any:
    # JSON has no NaN: an SD of one seed, or a mean of no figures, is null
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def graph_rows(scales: Sequence[Scale], runs: Sequence[dict], profiles: dict[str, dict], match: str,
               with_test: bool) -> list[dict]:
    """One row per graph: its scale, counts, and per metric (``map50``, ``map``) the seeds'
    values, mean, sample SD and min/max on val (and test); ``map``/``map50`` at the top are
    the means, which ``--require`` checks. ``runs``: one dict per (graph, seed) with
    ``graph``, ``seed``, ``dir``, ``val``, ``test``, ``img_per_s``."""
    from .reference import summarize

    per_run = [{"network": r["graph"], "key": r["graph"], "source": "graph", "repeat": 0, "seed": r["seed"],
                "val": r["val"], "test": r["test"]} for r in runs]
    stats = {m: {s["network"]: s for s in summarize(per_run, m)} for m in ("map50", "map")}
    first_fpn = profiles[scales[0].graph]["fpn_flops"]
    rows = []
    for sc in scales:
        prof = profiles[sc.graph]
        mine = [r for r in runs if r["graph"] == sc.graph]
        speeds = sorted(r["img_per_s"] for r in mine if r.get("img_per_s") is not None)
        row = {"graph": sc.graph, "repeat": prof["repeat"], "channels": prof["channels"],
               "params": prof["params"], "fpn_params": prof["fpn_params"], "flops": prof["flops"],
               "fpn_flops": prof["fpn_flops"],
               "fpn_flops_diff_pct": 100.0 * (prof["fpn_flops"] - first_fpn) / first_fpn if first_fpn else 0.0,
               "seeds": [r["seed"] for r in mine],
               "runs": [{k: r[k] for k in ("seed", "dir", "val", "test")} for r in mine]}
        if match != "none":
            row["matched"] = {"match": match, "fpn_flops": sc.fpn_flops, "diff_pct": sc.diff_pct, "within": sc.within}
        for split in ("val", "test") if with_test else ("val",):
            row[split] = {m: {k: v for k, v in stats[m][sc.graph][split].items()} for m in ("map50", "map")}
        row["map50"], row["map"] = row["val"]["map50"]["mean"], row["val"]["map"]["mean"]
        row["train_img_per_s"] = speeds[len(speeds) // 2] if speeds else 0.0
        rows.append(_finite(row))
    return rows


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "–" if x is None else format(x, fmt)


def _spread(s: dict) -> tuple[str, str, str]:
    values = ", ".join(_num(v) for v in s["values"])
    mean_sd = _num(s["mean"]) + ("" if s["sd"] is None else f" ± {s['sd']:.3f}")
    rng = "–" if s["min"] is None else f"{s['min']:.3f}–{s['max']:.3f}"
    return values, mean_sd, rng


def table_markdown(rows: Sequence[dict], title: str) -> str:
    """The table: a row per graph; per seed figures, mean ± sample SD and range; test
    columns where the rows have test figures."""
    with_test = any("test" in r for r in rows)
    head = ["graph", "repeat", "width", "params", "feature-net params", "FLOPs", "feature-net FLOPs",
            "Δ feature-net FLOPs", "seeds", "mAP@0.5 per seed", "mAP@0.5 mean ± SD", "mAP@0.5 range",
            "mAP per seed", "mAP mean ± SD", "mAP range"]
    if with_test:
        head += ["test mAP@0.5 per seed", "test mAP@0.5 mean ± SD", "test mAP@0.5 range", "test mAP mean ± SD"]
    head.append("train img/s (median)")
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["graph"], str(r["repeat"]), str(r["channels"]), f"{r['params']:,}", f"{r['fpn_params']:,}",
                 f"{r['flops']:,}", f"{r['fpn_flops']:,}", f"{r['fpn_flops_diff_pct']:+.1f}%",
                 " ".join(map(str, r["seeds"])), *_spread(r["val"]["map50"]), *_spread(r["val"]["map"])]
        if with_test:
            cells += [*_spread(r["test"]["map50"]), _spread(r["test"]["map"])[1]]
        cells.append(f"{r['train_img_per_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_noise(rows: Sequence[dict], split: str = "val", metric: str = "map50") -> float | None:
    """The seed SD the graphs share (pooled over graphs with two or more seeds)."""
    from .reference import pooled_sd

    groups = [[v for v in r[split][metric]["values"] if v is not None] for r in rows if split in r]
    sd = pooled_sd(groups)
    return sd if math.isfinite(sd) else None
