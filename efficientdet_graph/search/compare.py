"""Judging a search: the found graphs against FPN, PANet and BiFPN at matched FLOPs on
the same proxy, re-trained with several seeds; and samplers against each other at an
equal trial budget. Both write a results file that says how it was made."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import optuna

from .._io import atomic_write_text
from ..errors import SearchError
from ..graph import canonical_hash
from ..passes import load_graph
from ..profile.analytic import graph_cost
from .mapping import Candidate
from .report import best_so_far, hypervolume
from .proxy_scores import proxy_score
from .verdicts import MATCH_WAYS
from .study import Evaluator, StudyConfig, _load_space, best_trials, run_worker, study_metric, summary, trial_status

__all__ = ["provenance", "matched_scale", "detector_flops", "match_at_schedule", "compare_study", "benchmark_samplers",
           "sampler_verdicts"]


def provenance(argv: Sequence[str] | None = None) -> dict:
    """Command, versions, date and machine, for every results file."""
    import timm
    import torch

    from .. import __version__

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": " ".join(["edg", *(argv if argv is not None else sys.argv[1:])]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"efficientdet_graph": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "timm": timm.__version__, "optuna": optuna.__version__},
        "machine": {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
    }


def matched_scale(graph, target_flops: float, cost, in_channels: dict, *, base_repeat: int, base_channels: int,
                  max_repeat: int = 8, widths: Sequence[int] | None = None,
                  tolerance: float = 0.10, match: str = "depth",
                  flops_of: Callable[[object, int], int] | None = None,
                  closest: bool = False) -> tuple[int, int, int]:
    """(repeat, channels, FLOPs) of ``graph`` matching ``target_flops``: the paper's
    ablation matches cost by repeating FPN/PANet, so within ``tolerance`` the width stays
    the base's if any depth gets there; width is the second knob, then the closest cost.
    ``match="width"`` keeps the base depth and changes the width first (fairer to deep
    stacks on a short proxy, which trains them too briefly to converge). ``flops_of(graph,
    width)`` counts ``graph`` stacked ``repeat`` times at ``width`` (default: the feature
    network's FLOPs). ``closest`` turns only the first knob, to the closest cost, instead
    of staying nearest the base scale anywhere within the tolerance."""
    widths = list(widths or range(16, 513, 8))
    if flops_of is None:
        def flops_of(g, w: int) -> int:
            return graph_cost(g, w, in_channels, cost.image_size).flops
    best = None
    for r in range(1, max_repeat + 1):
        g = _at_repeat(graph, r)
        for w in widths:
            flops = flops_of(g, w)
            off = abs(flops - target_flops) / target_flops
            # inside the tolerance, keep the width and change the depth if possible
            near = (abs(w - base_channels), abs(r - base_repeat)) if match == "depth" else \
                (abs(r - base_repeat), abs(w - base_channels))
            key = (off > tolerance, near[0], off) if closest else (off > tolerance, *near, off)
            if best is None or key < best[0]:
                best = (key, r, w, flops)
    _, r, w, flops = best
    return r, w, int(flops)


def _at_repeat(graph, repeat: int):
    g = graph.copy()
    g.graph = {**graph.graph, "outputs": dict(graph.graph["outputs"]), "repeat": repeat}
    return g


def detector_flops(graph, repeat: int, width: int, schedule, num_classes: int) -> int:
    """FLOPs of the whole detector a reference job trains for ``graph`` at ``repeat`` and
    ``width`` (backbone, input adapter, feature network, heads: the spec ``model_yaml``
    writes), counted analytically (``model_cost``) without building it."""
    import tempfile

    from ..graph import graph_to_yaml
    from ..profile.analytic import model_cost
    from .reference import Network, model_yaml

    with tempfile.TemporaryDirectory(prefix="edg-match-") as d:
        (Path(d) / "graph.yaml").write_text(graph_to_yaml(_at_repeat(graph, 1)))
        net = Network("match", "", repeat, "matched", channels=width)
        (Path(d) / "model.yaml").write_text(model_yaml(net, schedule, num_classes))
        return int(model_cost(Path(d) / "model.yaml").flops)


def match_at_schedule(target, target_repeat: int, target_width: int | None, baselines: Sequence[tuple[str, object]],
                      schedule, by: Sequence[str] = ("depth", "width"), tolerance: float = 0.10,
                      num_classes: int | None = None) -> dict:
    """Each baseline graph matched to ``target``'s FLOPs at the reference schedule's scale
    (its image size, width and backbone's channels), once per way in ``by``
    (``MATCH_WAYS``; ``matched_scale``: depth repeats the baseline, width widens it; a
    ``detector-`` way holds the whole detector's FLOPs equal, heads for ``num_classes``
    classes included); every row says whether it lands within ``tolerance``. What
    ``edg search reference --graphs`` takes to re-train found networks beside
    cost-matched baselines."""
    from .zerocost import _backbone_channels

    bad = [w for w in by if w not in MATCH_WAYS]
    if bad:
        raise SearchError(f"match by {bad[0]!r}: expected one of {', '.join(MATCH_WAYS)}")
    if any(w.startswith("detector-") for w in by) and not num_classes:
        raise SearchError("a match on the detector's FLOPs needs the number of classes (its heads' outputs)")
    in_ch = _backbone_channels(schedule.backbone, 3, 5)
    scale = type("Scale", (), {"image_size": schedule.image_size})

    def features(stacked, width: int) -> int:
        return int(graph_cost(stacked, width, in_ch, schedule.image_size).flops)

    rest: dict[tuple, int] = {}  # all but the feature network: depends on the levels and width only

    def detector(stacked, width: int) -> int:
        key = (tuple(stacked.graph["levels"]), width)
        if key not in rest:
            rest[key] = detector_flops(stacked, 1, width, schedule, num_classes) - features(_at_repeat(stacked, 1),
                                                                                            width)
        return features(stacked, width) + rest[key]

    width = target_width or schedule.channels
    stacked = _at_repeat(target, target_repeat)
    goals = {"features": features(stacked, width)}
    if any(w.startswith("detector-") for w in by):
        goals["detector"] = detector(stacked, width)
    rows = []
    for name, graph in baselines:
        for way in by:
            on, _, knob = way.rpartition("-")
            on = on or "features"
            # On the detector, the backbone's fixed cost makes the tolerance loose for the
            # neck (10% of 53 MFLOPs is half a small neck): the knob goes to the closest cost.
            goal = goals[on]
            r, w, f = matched_scale(graph, goal, scale, in_ch, base_repeat=schedule.repeat,
                                    base_channels=schedule.channels, tolerance=tolerance, match=knob,
                                    flops_of=features if on == "features" else detector, closest=on == "detector")
            item = name + (f":{r}" if r != schedule.repeat else "") + (f"@{w}" if w != schedule.channels else "")
            rows.append({"graph": name, "by": knob, "on": on, "way": way, "repeat": r, "channels": w, "flops": f,
                         "diff_pct": round(100 * (f - goal) / goal, 2), "within": abs(f - goal) <= tolerance * goal,
                         "item": item})
    return {"target_flops": goals["features"], "target_detector_flops": goals.get("detector"),
            "target_repeat": target_repeat, "target_channels": width,
            "image_size": schedule.image_size, "in_channels": in_ch, "tolerance": tolerance, "rows": rows}


def _candidate(graph, repeat: int, channels: int, cost) -> Candidate:
    return Candidate({}, _at_repeat(graph, 1), None, repeat=repeat, channels=channels, image_size=cost.image_size,
                     width_scale=channels / cost.channels)


def _stats(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "spread": max(values) - min(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def compare_study(study: optuna.Study, cfg: StudyConfig, *, top: int = 3, seeds: Sequence[int] = (1, 2, 3),
                  baselines: Sequence[str] = ("fpn", "panet", "bifpn"), tolerance: float = 0.10,
                  epochs: int | None = None, say: Callable[[str], None] = print, match: str = "depth") -> dict:
    """Found graphs vs baselines at matched FLOPs (±``tolerance``) on the study's proxy, then
    the ``top`` found graphs and BiFPN (matched) re-trained with ``seeds``."""
    space = _load_space(cfg)
    cost = space.spec.cost
    lo, hi = space.spec.levels
    in_ch = {k: c for k, c in cost.in_channels.items() if lo <= k <= hi}
    evaluator = Evaluator(space, cfg)
    metric = study_metric(space, cfg)
    trials = study.get_trials(deepcopy=False)
    baseline_keys = {}
    for name in baselines:
        g = load_graph(name)
        baseline_keys[canonical_hash(g, ops=True)] = name
    found = [t for t in best_trials(trials, "accuracy")
             if not t.user_attrs.get("edg_point")][:top]
    if not found:
        raise SearchError(f"study {cfg.study_name!r} has no finished trial besides its seed points")
    target = float(found[0].user_attrs["edg_flops"])

    def run(graph, repeat: int, channels: int, seed: int | None = None):
        cand = _candidate(graph, repeat, channels, cost)
        pc = evaluator.config_for(cand)
        from .proxy import ProxyTask

        if pc.image_size not in evaluator.tasks:
            evaluator.tasks[pc.image_size] = ProxyTask(pc, cfg.proxy_cache_dir)
        task = evaluator.tasks[pc.image_size]
        return task.evaluate(cand.stacked(), channels=pc.channels, seed=pc.seed if seed is None else seed,
                             epochs=epochs)

    rows = []
    rows.append({"graph": f"found (trial {found[0].number})", "repeat": found[0].user_attrs["edg_repeat"],
                 "channels": found[0].user_attrs["edg_channels"], "flops": int(target), "flops_diff_pct": 0.0,
                 "metric": found[0].user_attrs["edg_metric"], "source": "study"})
    matched = {}
    for name in baselines:
        g = load_graph(name)
        r, w, flops = matched_scale(g, target, cost, in_ch, base_repeat=space.spec.repeat, base_channels=cost.channels,
                                    tolerance=tolerance, match=match)
        say(f"{name}: matched at repeat {r}, width {w}: {flops / 1e9:.3f} GFLOPs vs {target / 1e9:.3f}; training ...")
        result = run(g, r, w)
        diff = 100.0 * (flops - target) / target
        rows.append({"graph": name, "repeat": r, "channels": w, "flops": flops, "flops_diff_pct": diff,
                     "metric": proxy_score(metric, asdict(result)), "source": "proxy", "seconds": round(result.seconds, 1)})
        matched[name] = (g, r, w)
    # Re-train with several seeds: the top found graphs and BiFPN at matched FLOPs.
    seeded = []
    entries = [(f"found #{i + 1} (trial {t.number})", load_spec_graph(t.user_attrs["edg_graph"]),
                t.user_attrs["edg_repeat"], t.user_attrs["edg_channels"], float(t.user_attrs["edg_flops"]))
               for i, t in enumerate(found)]
    if "bifpn" in matched:
        g, r, w = matched["bifpn"]
        entries.append(("bifpn (matched)", g, r, w, float(rows[[x["graph"] for x in rows].index("bifpn")]["flops"])))
    for label, g, r, w, flops in entries:
        values = []
        for s in seeds:
            say(f"{label}: seed {s} ...")
            values.append(proxy_score(metric, asdict(run(g, r, w, s))))
        seeded.append({"graph": label, "repeat": r, "channels": w, "flops": int(flops), **_stats(values)})
    verdicts = []
    ref = next((x for x in seeded if x["graph"].startswith("bifpn")), None)
    if ref is not None:
        for x in seeded:
            if x is ref:
                continue
            gap = x["mean"] - ref["mean"]
            win = x["min"] > ref["max"]
            verdicts.append({"graph": x["graph"], "gap_vs_bifpn": gap, "win": win,
                             "text": (f"{x['graph']} beats BiFPN: mean {metric} {x['mean']:.4f} vs {ref['mean']:.4f}, "
                                      f"every seed above BiFPN's best" if win else
                                      f"{x['graph']} does not beat BiFPN: mean gap {gap:+.4f} "
                                      f"(seed ranges {x['min']:.4f}-{x['max']:.4f} vs {ref['min']:.4f}-{ref['max']:.4f})")})
    unmatched = [r["graph"] for r in rows[1:] if abs(r["flops_diff_pct"]) > 100 * tolerance]
    return {"study": cfg.study_name, "space": space.name, "metric": metric, "flops_convention": "multiply-adds",
            "cost_scale": {"channels": cost.channels, "image_size": cost.image_size, "in_channels": in_ch},
            "proxy": {k: v for k, v in vars(evaluator.base).items()}, "epochs_override": epochs,
            "tolerance_pct": 100 * tolerance, "match": match, "matched": rows, "seeds": list(seeds), "retrained": seeded,
            "verdicts": verdicts, "unmatched": unmatched, "summary": summary(study, cfg)}


def load_spec_graph(text: str):
    from ..graph import build_graph
    from ..spec import load_spec_text

    spec, src = load_spec_text(text, "<trial graph>")
    return build_graph(spec, src)


def compare_table(result: dict) -> str:
    m = result["metric"]
    lines = [f"Matched FLOPs (±{result['tolerance_pct']:.0f}%, by {result.get('match', 'depth')} first), proxy {m}; FLOPs = multiply-adds of the feature network "
             f"at {result['cost_scale']['channels']} channels, {result['cost_scale']['image_size']} px.", "",
             f"| graph | repeat | width | GFLOPs | ΔFLOPs | proxy {m} |", "|---|---|---|---|---|---|"]
    for r in result["matched"]:
        lines.append(f"| {r['graph']} | {r['repeat']} | {r['channels']} | {r['flops'] / 1e9:.3f} | "
                     f"{r['flops_diff_pct']:+.1f}% | {r['metric']:.4f} |")
    lines += ["", f"Re-trained with seeds {result['seeds']}:", "",
              f"| graph | GFLOPs | mean {m} | min | max | spread |", "|---|---|---|---|---|---|"]
    for r in result["retrained"]:
        lines.append(f"| {r['graph']} | {r['flops'] / 1e9:.3f} | {r['mean']:.4f} | {r['min']:.4f} | {r['max']:.4f} | "
                     f"{r['spread']:.4f} |")
    if result["verdicts"]:
        lines += [""] + [f"- {v['text']}" for v in result["verdicts"]]
    return "\n".join(lines) + "\n"


def benchmark_samplers(space: str, samplers: Sequence[str], seeds: Sequence[int], trials: int, out: Path,
                       proxy: tuple = (), say: Callable[[str], None] = print, proxy_cache: str | None = None,
                       population: int = 6, calibration: str | None = None) -> dict:
    """Each sampler with each seed, ``trials`` trials, one shared results cache (a network
    is trained once, whichever study meets it first); best metric, hypervolume and
    best-so-far curves."""
    out = Path(out)
    cache = out / "results-cache.jsonl"
    runs = []
    for sampler in samplers:
        for seed in seeds:
            cfg = StudyConfig(space=space, out=str(out), study=f"{sampler}-s{seed}", sampler=sampler, seed=seed,
                              trials=trials, proxy=tuple(proxy), cache=str(cache), seed_points=False, quiet=True,
                              proxy_cache=proxy_cache, population=population, calibration=calibration)
            say(f"{sampler}, seed {seed}: {trials} trials ...")
            result = run_worker(cfg)
            study = optuna.load_study(study_name=cfg.study_name, storage=_storage(out))
            ts = study.get_trials(deepcopy=False)
            done = [t for t in ts if trial_status(t) in ("done", "reused", "cached") and "edg_metric" in t.user_attrs]
            runs.append({"sampler": sampler, "seed": seed, "finished": result["finished"],
                         "points": [(t.user_attrs["edg_metric"], t.user_attrs["edg_flops"]) for t in done],
                         "best_so_far": best_so_far(ts), "best": max((t.user_attrs["edg_metric"] for t in done),
                                                                     default=None)})
            say(f"  best {runs[-1]['best']}")
    ref_cost = 1.1 * max((c for r in runs for _, c in r["points"]), default=1.0)
    # the metric's floor: 0 for an mAP; the worst score seen for a negated loss
    ref_metric = min([0.0, *(m for r in runs for m, _ in r["points"])])
    for r in runs:
        r["hypervolume"] = hypervolume(r["points"], (ref_metric, ref_cost)) / 1e9
    by = {}
    for s in samplers:
        mine = [r for r in runs if r["sampler"] == s]
        by[s] = {"best": _stats([r["best"] for r in mine if r["best"] is not None] or [math.nan]),
                 "hypervolume": _stats([r["hypervolume"] for r in mine])}
    return {"space": space, "trials": trials, "seeds": list(seeds), "proxy": [list(p) for p in proxy],
            "population": population, "calibration": calibration,
            "hypervolume_reference": {"metric": ref_metric, "gflops": ref_cost / 1e9,
                                      "unit": "metric x GFLOPs (multiply-adds)"},
            "by_sampler": by, "verdicts": sampler_verdicts(by), "runs": runs}


def sampler_verdicts(by_sampler: dict, baseline: str = "random") -> dict:
    """Each sampler against ``baseline`` on the best metric and on the hypervolume, by
    seed range: "better" only where its worst seed beats the baseline's best seed,
    "worse" where its best seed is below the baseline's worst, else "within the spread"."""
    out = {}
    if baseline not in by_sampler:
        return out
    base = by_sampler[baseline]
    for name, r in by_sampler.items():
        if name == baseline:
            continue
        out[name] = {}
        for what in ("best", "hypervolume"):
            mine, theirs = r[what], base[what]
            out[name][what] = ("better" if mine["min"] > theirs["max"] else "worse" if mine["max"] < theirs["min"]
                               else "within the spread")
    return out


def _storage(out: Path):
    from .storage import open_storage

    return open_storage(None, out)


def plot_benchmark(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = {"random": "tab:gray", "tpe": "tab:blue", "evolution": "tab:red", "nsga2": "tab:green"}
    for sampler in result["by_sampler"]:
        curves = [[math.nan if v is None else v for v in r["best_so_far"]] for r in result["runs"]
                  if r["sampler"] == sampler]
        n = min(len(c) for c in curves)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]  # NaN until every seed has a result
        for c in curves:
            ax.plot(range(1, len(c) + 1), c, "-", c=colors.get(sampler, "k"), alpha=0.25, lw=0.8)
        ax.plot(range(1, n + 1), mean, "-", c=colors.get(sampler, "k"), lw=2, label=f"{sampler} (mean of {len(curves)})")
    ax.set_xlabel("trial")
    ax.set_ylabel("best proxy metric so far")
    ax.set_title(f"{result['space']}: samplers at an equal budget")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_results(path: str | Path, result: dict, argv: Sequence[str] | None = None) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps({**provenance(argv), **result}, indent=2, default=str))
    return path

