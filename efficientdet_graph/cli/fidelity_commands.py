"""``edg search fidelity``: does a ranking of networks agree with the reference table?"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..errors import SearchError

__all__ = ["register_search"]

SCORES_FORMAT = ('a JSON object mapping network name (as in the reference table) to score, higher is better, '
                 'e.g. {"fpn": 0.41, "bifpn": 0.45, "nofusion": 0.30, "panet": 0.43}')


def register_search(s: argparse._SubParsersAction) -> None:
    q = s.add_parser(
        "fidelity", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="a ranking (a proxy's scores, or FLOPs/params alone) against the reference table: Kendall tau, "
             "its bootstrap interval, Spearman rho, top-k recall; exit 1 below the bar")
    q.add_argument("reference", metavar="REFERENCE", help="the reference results file (edg search reference --results)")
    how = q.add_mutually_exclusive_group(required=True)
    how.add_argument("--scores", default=None, metavar="FILE", help=f"the ranking to judge: {SCORES_FORMAT}")
    how.add_argument("--by", choices=("flops", "params"), default=None,
                     help="judge a no-training ranking instead: feature-network FLOPs or parameters, more ranked higher")
    how.add_argument("--zero-cost", choices=("entropy", "synflow"), default=None,
                     help="judge a training-free score computed here for every network of the table, at "
                          "initialisation on the reference schedule's shapes (entropy: MAE-DET's Gaussian entropy; "
                          "synflow: synaptic flow)")
    q.add_argument("--split", choices=("val", "test"), default="val",
                   help="the reference split the ranking is compared with (test: final claims only)")
    q.add_argument("--metric", choices=("map50", "map", "map75"), default="map50",
                   help="the reference score (map50: the file's table; others: summarized from its runs)")
    q.add_argument("--threshold", type=float, default=0.6, help="exit 1 when Kendall tau is below this")
    q.add_argument("--lower-bound", type=float, default=0.3, help="exit 1 when the interval's lower end is below this")
    q.add_argument("--top-k", type=int, default=3, help="k of the top-k recall")
    q.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    q.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    q.add_argument("--results", default=None, metavar="OUT.json", help="write the figures and the verdict here")
    q.set_defaults(handler=cmd_fidelity)


def _read_json(path: str, what: str):
    p = Path(path)
    if not p.is_file():
        raise SearchError(f"{what} {path}: no such file")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SearchError(f"{what} {path}: not JSON ({e})") from None


def _table(doc, path: str, metric: str) -> list[dict]:
    if not isinstance(doc, dict) or not isinstance(doc.get("table"), list):
        raise SearchError(f"reference {path}: not a reference results file (no \"table\" list)")
    if metric == "map50":  # the file's table is mAP@0.5 (what the reference build summarizes)
        return doc["table"]
    from ..search.reference import summarize

    runs = doc.get("runs")
    if not isinstance(runs, list) or not runs:
        raise SearchError(f"reference {path}: --metric {metric} needs the file's \"runs\", and it has none")
    try:
        return summarize(runs, metric)
    except (KeyError, TypeError) as e:
        raise SearchError(f"reference {path}: a run lacks the field {e}") from None


def _scores(path: str) -> dict[str, float]:
    doc = _read_json(path, "scores")
    if not isinstance(doc, dict):
        raise SearchError(f"scores {path}: expected {SCORES_FORMAT}")
    bad = [k for k, v in doc.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise SearchError(f"scores {path}: not a finite number for {', '.join(map(repr, bad))}; expected {SCORES_FORMAT}")
    return {k: float(v) for k, v in doc.items()}


def _zero_cost(doc: dict, table: list[dict], name: str, path: str) -> tuple[dict[str, float], dict]:
    """Every table network's training-free score, on the shapes of the file's schedule."""
    import statistics
    from dataclasses import asdict

    import torch

    from ..graph import build_graph
    from ..spec import load_spec_text
    from ..search.zerocost import ZeroCostSettings, zero_cost_score

    sched = doc.get("schedule") or {}
    classes = ((doc.get("task") or {}).get("splits") or {}).get("train", {}).get("classes")
    settings = ZeroCostSettings(**{k: sched[k] for k in ("backbone", "image_size", "channels", "head_repeat",
                                                         "anchor_scale") if k in sched},
                                **({"num_classes": len(classes)} if classes else {}))
    lacking = [r.get("network", "?") for r in table if not r.get("graph_yaml")]
    if lacking:
        raise SearchError(f"reference {path}: no graph for {', '.join(lacking)} (a file written before graphs were "
                          "kept in the table: write it again with the same edg search reference command and --no-gate)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the seconds below are one core's
    try:
        scores, seconds = {}, {}
        for r in table:
            repeat = r.get("repeat") or 1
            if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= 64:
                raise SearchError(f"reference {path}: {r['network']}: repeat {repeat!r} is not a whole number 1..64")
            graph = build_graph(*load_spec_text(str(r["graph_yaml"]), f"{path}#{r['network']}"))
            scores[r["network"]], seconds[r["network"]] = zero_cost_score(name, graph, repeat, settings)
    finally:
        torch.set_num_threads(threads)
    return scores, {"score": name, "settings": asdict(settings), "scores": scores, "seconds": seconds,
                    "median_seconds": statistics.median(seconds.values())}


def _f(x: float) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.3f}"


def cmd_fidelity(args: argparse.Namespace) -> int:
    from .._io import atomic_write_text
    from ..search.ranking import fidelity, judge

    # the resamples are drawn at once (n_boot x networks x seeds numbers): keep that in memory
    if not (1 <= args.n_boot <= 100_000 and args.top_k >= 1):
        raise SearchError(f"--n-boot must be 1..100000 and --top-k >= 1, got {args.n_boot} and {args.top_k}")
    doc = _read_json(args.reference, "reference")
    table = _table(doc, args.reference, args.metric)
    zero_cost = None
    if args.zero_cost:
        scores, zero_cost = _zero_cost(doc, table, args.zero_cost, args.reference)
        print(f"{args.zero_cost}: {len(scores)} networks scored at initialisation, median "
              f"{zero_cost['median_seconds']:.2f} s each on one core")
    else:
        scores = _scores(args.scores) if args.scores else None
    try:
        result = fidelity(table, scores, split=args.split, metric=args.metric, k=args.top_k, n_boot=args.n_boot,
                          seed=args.seed)
    except (KeyError, TypeError, ValueError) as e:  # a hand-edited table: a row without a name, a null score
        raise SearchError(f"reference {args.reference}: a table row cannot be read ({type(e).__name__}: {e})") from None
    ranking = "proxy" if scores is not None else args.by
    verdict = judge(result, ranking, threshold=args.threshold, lower_bound=args.lower_bound)

    level = round(100 * result["bootstrap"]["level"])
    labels = {"proxy": f"scores ({Path(args.scores).name})" if args.scores else f"zero-cost {args.zero_cost}",
              "flops": "FLOPs only",
              "params": "params only"}
    width = max(len(labels[r]) for r in result["rankings"]) + 2
    top = f"top-{result['k']} recall"
    print(f"{'ranking':<{width}}{'tau':>7}  {f'{level}% interval':<17}{'rho':>7}  {top:>13}{'n':>5}")
    for name, fig in result["rankings"].items():
        interval = "[{}, {}]".format(*map(_f, fig["tau_interval"]))
        mark = "  <- judged" if name == ranking else ""
        print(f"{labels[name]:<{width}}{_f(fig['tau']):>7}  {interval:<17}{_f(fig['rho']):>7}  "
              f"{_f(fig['top_k_recall']):>13}{result['n']:>5}{mark}")
    print(f"truth: the reference's {args.split} {args.metric}, mean over seeds; interval of tau: "
          f"{result['bootstrap']['n_boot']} resamples of the networks and of each one's seeds; "
          "FLOPs/params only: more ranked higher")
    if verdict["passed"]:
        print(f"PASS: tau >= {args.threshold}, interval's lower bound >= {args.lower_bound}, above FLOPs and params")
    else:
        print("FAIL: " + "; ".join(verdict["reasons"]))
    if args.results:
        from ..search.compare import provenance
        from ..search.reference_report import _clean

        doc = {**provenance(args.argv), "reference_file": args.reference, "scores_file": args.scores, "by": args.by,
               "zero_cost": zero_cost, "fidelity": result, "verdict": verdict}
        atomic_write_text(args.results, json.dumps(_clean(doc), indent=1) + "\n")
        print(f"results: {args.results}")
    return 0 if verdict["passed"] else 1
