"""What a study found: the front as graph-spec YAML, plots, hypervolume."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Sequence

import optuna
from optuna.trial import FrozenTrial

from .._io import atomic_write_text
from ..errors import SearchError
from ..passes import load_graph
from .study import StudyConfig, best_trials, trial_status

__all__ = ["write_best", "plot_study", "hypervolume", "best_so_far", "BASELINES"]

BASELINES = ("fpn", "panet", "bifpn", "nasfpn")


def write_best(study: optuna.Study, cfg: StudyConfig, out: str | Path, top: int = 5) -> list[dict]:
    """The best ``top`` graphs (the Pareto front in ``pareto`` mode) as graph-spec YAML that
    loads, validates and compiles like any other graph, plus ``front.json``."""
    out = Path(out)
    best = best_trials(study.get_trials(deepcopy=False), cfg.objective, top)
    if not best:
        raise SearchError(f"study {cfg.study_name!r} has no finished trial yet")
    rows = []
    for rank, t in enumerate(best, 1):
        path = out / f"{rank:02d}_trial{t.number}.yaml"
        atomic_write_text(path, t.user_attrs["edg_graph"])
        load_graph(path)  # it must read back as a valid graph, or this is a bug worth a traceback
        rows.append({"rank": rank, "file": str(path), "trial": t.number, "metric": t.user_attrs["edg_metric"],
                     "map": t.user_attrs.get("edg_map"), "map50": t.user_attrs.get("edg_map50"),
                     "flops": t.user_attrs["edg_flops"], "params": t.user_attrs["edg_params"],
                     "repeat": t.user_attrs.get("edg_repeat"), "key": t.user_attrs.get("edg_key"),
                     "params_of_space": t.params})
    atomic_write_text(out / "front.json", json.dumps({"study": cfg.study_name, "objective": cfg.objective,
                                                      "flops_convention": "multiply-adds", "front": rows}, indent=2))
    return rows


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (metric to maximize, cost to minimize) and bounded by
    ``reference`` = (lowest metric, highest cost). Points outside the reference add nothing."""
    pts = sorted({(m, c) for m, c in points if m > reference[0] and c < reference[1]}, key=lambda p: (p[1], -p[0]))
    # sweep from the cheapest point: the best metric so far holds until the next cost
    area, best = 0.0, reference[0]
    for i, (m, c) in enumerate(pts):
        best = max(best, m)
        nxt = pts[i + 1][1] if i + 1 < len(pts) else reference[1]
        area += (best - reference[0]) * (nxt - c)
    return area


def best_so_far(trials: list[FrozenTrial]) -> list[float | None]:
    """The best proxy metric after each trial, in trial order (None before the first
    result: a metric may be negative, a negated loss, so no number stands for "none yet")."""
    best: float | None = None
    out: list[float | None] = []
    for t in sorted(trials, key=lambda t: t.number):
        if trial_status(t) in ("done", "reused", "cached") and "edg_metric" in t.user_attrs:
            m = float(t.user_attrs["edg_metric"])
            best = m if best is None else max(best, m)
        out.append(best)
    return out


def plot_study(study: optuna.Study, cfg: StudyConfig, out: str | Path) -> list[Path]:
    """``pareto.png`` (every evaluated network, the front, and FPN / PANet / BiFPN / NAS-FPN
    where the study evaluated them), ``history.png`` (best so far by trial) and
    ``importances.png`` (Optuna's PED-ANOVA importances of the parameters every trial has)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if trial_status(t) in ("done", "reused", "cached") and "edg_metric" in t.user_attrs]
    if not done:
        raise SearchError(f"study {cfg.study_name!r} has no finished trial to plot")
    metric = study.user_attrs.get("edg_metric", "metric")
    written = []

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([t.user_attrs["edg_flops"] / 1e9 for t in done], [t.user_attrs["edg_metric"] for t in done],
               s=14, c="0.6", label="trials")
    front = sorted(best_trials(trials, "pareto"), key=lambda t: t.user_attrs["edg_flops"])
    ax.plot([t.user_attrs["edg_flops"] / 1e9 for t in front], [t.user_attrs["edg_metric"] for t in front],
            "o-", c="tab:red", label="Pareto front")
    marks = {"fpn": "s", "panet": "^", "bifpn": "*", "nasfpn": "D"}
    for t in done:
        name = t.user_attrs.get("edg_point") or t.user_attrs.get("edg_baseline")
        if name in marks:
            ax.scatter([t.user_attrs["edg_flops"] / 1e9], [t.user_attrs["edg_metric"]], marker=marks[name], s=90,
                       edgecolor="k", zorder=5, label=name)
    ax.set_xlabel("feature-network GFLOPs (multiply-adds)")
    ax.set_ylabel(f"proxy {metric}")
    ax.set_title(f"{cfg.study_name}: {len(done)} evaluated networks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out / "pareto.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    curve = [math.nan if v is None else v for v in best_so_far(trials)]
    ax.plot(range(1, len(curve) + 1), curve, "-", c="tab:blue")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best proxy {metric} so far")
    ax.set_title(f"{cfg.study_name}: optimization history")
    fig.tight_layout()
    written.append(_save(fig, out / "history.png"))
    plt.close(fig)

    try:
        with warnings.catch_warnings():  # PED-ANOVA notes it ranks for low targets: we negate the metric
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, target=lambda t: -float(t.user_attrs.get("edg_metric", 0.0)),
                evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError):
        imp = {}
    if imp:
        names = list(imp)[:20][::-1]
        fig, ax = plt.subplots(figsize=(6.4, 0.3 * len(names) + 1.2))
        ax.barh(names, [imp[n] for n in names], color="tab:green")
        ax.set_xlabel("importance (PED-ANOVA, normalised)")
        ax.set_title(f"{cfg.study_name}: parameter importances")
        fig.tight_layout()
        written.append(_save(fig, out / "importances.png"))
        plt.close(fig)
    return written


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path
