"""``edg search fidelity``: does a ranking of networks agree with the reference table?"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..errors import SearchError
from ..search.proxy_scores import SCORES

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
    how.add_argument("--proxy", nargs="*", default=None, metavar="KEY=VALUE",
                     help="train the proxy on every network of the table and judge its ranking; KEY=VALUE pairs "
                          "are proxy settings (ProxyConfig fields: epochs=2 trial_images=512 channels=16 ...) laid "
                          "over the reference's own data, backbone, shapes and shared pre-trained backbone")
    q.add_argument("--score", choices=SCORES, default="map50",
                   help="with --proxy: the trial score judged (the others are reported beside it): map50, map, "
                        "val_loss, train_loss (the sum of epoch losses, SoTL), extrapolated (asymptote of the "
                        "mAP@0.5 curve)")
    q.add_argument("--proxy-seeds", type=int, default=1, metavar="N",
                   help="with --proxy: trials per network (seeds 0..N-1); a network's score is their mean")
    q.add_argument("--cache", default="runs/proxy-cache", metavar="DIR",
                   help="with --proxy: the cached backbone features and the log of finished trials (a cut-short "
                        "run goes on from it)")
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

    q = s.add_parser(
        "calibrate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="proxy variants, training-free scores and FLOPs/params priors judged against a reference table in "
             "one table; picks the default proxy (the cheapest that clears the bar), exit 1 when none does")
    q.add_argument("reference", metavar="REFERENCE", nargs="?", default=None,
                   help="the reference results file (edg search reference --results)")
    q.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="proxy variants to train (default: all registered: edg search calibrate --list)")
    q.add_argument("--list", action="store_true", help="list the registered variants and their settings, and exit")
    q.add_argument("--zero-cost", nargs="*", default=["entropy", "synflow"], choices=("entropy", "synflow"),
                   help="training-free scores to judge beside them")
    q.add_argument("--split", choices=("val", "test"), default="val")
    q.add_argument("--cache", default="runs/proxy-cache", metavar="DIR",
                   help="cached backbone features and the logs of finished trials (a cut-short run goes on)")
    q.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    q.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    q.add_argument("--results", default=None, metavar="OUT.json", help="the table (and OUT.md beside it)")
    q.set_defaults(handler=cmd_calibrate)


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


def _proxy_settings(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs as typed ProxyConfig fields; an unknown key names a close one."""
    from ..search.proxy import coerce_proxy_settings

    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SearchError(f"--proxy {item!r}: expected KEY=VALUE, e.g. epochs=2")
        pairs[key.strip()] = value.strip()
    return coerce_proxy_settings(pairs)


def _run_proxy(args: argparse.Namespace, doc: dict, table: list[dict]) -> tuple[dict[str, list[dict]], dict]:
    """Trials of the proxy on every table network, and what the results file keeps of them."""
    import statistics
    from dataclasses import asdict

    from ..search.calibrate import reference_proxy, score_table

    if not 1 <= args.proxy_seeds <= 20:
        raise SearchError(f"--proxy-seeds must be 1..20, got {args.proxy_seeds}")
    cfg = reference_proxy(doc, _proxy_settings(args.proxy))
    rows = [r for r in table if (r.get(args.split) or {}).get("values")]
    trials, log = score_table(rows, cfg, args.cache, range(args.proxy_seeds), where=f"reference {args.reference}")
    wall = [t["seconds"] for t in trials]
    cpu = [t["cpu_seconds"] for t in trials]
    return trials, {"settings": asdict(cfg), "seeds": list(range(args.proxy_seeds)), "trial_log": str(log),
                    "median_trial_seconds": statistics.median(wall), "median_trial_cpu_seconds": statistics.median(cpu),
                    "trials": trials}


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
    zero_cost = proxy = None
    other_scores: dict = {}
    if args.proxy is not None:
        from ..search.calibrate import network_scores

        trials, proxy = _run_proxy(args, doc, table)
        scores = network_scores(trials, args.score)
        print(f"proxy: {len(trials)} trials, median {proxy['median_trial_seconds']:.1f} s each "
              f"({proxy['median_trial_cpu_seconds']:.1f} s CPU) on one core; judged score: {args.score}")
        for kind in SCORES:
            if kind != args.score:
                try:
                    other = fidelity(table, network_scores(trials, kind), split=args.split, metric=args.metric,
                                     k=args.top_k, n_boot=args.n_boot, seed=args.seed)
                except ValueError:  # a score a 0-epoch trial does not have
                    continue
                other_scores[kind] = other["rankings"]["proxy"]
    elif args.zero_cost:
        from ..search.calibrate import zero_cost_table

        scores, zero_cost = zero_cost_table(doc, table, args.zero_cost, f"reference {args.reference}")
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
    labels = {"proxy": (f"scores ({Path(args.scores).name})" if args.scores else f"proxy {args.score}"
                        if args.proxy is not None else f"zero-cost {args.zero_cost}"),
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
    for kind, fig in other_scores.items():
        interval = "[{}, {}]".format(*map(_f, fig["tau_interval"]))
        print(f"{'proxy ' + kind:<{width}}{_f(fig['tau']):>7}  {interval:<17}{_f(fig['rho']):>7}  "
              f"{_f(fig['top_k_recall']):>13}{result['n']:>5}  (not judged)")
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
               "zero_cost": zero_cost, "proxy": proxy, "score": args.score if proxy else None,
               "other_scores": other_scores or None, "fidelity": result, "verdict": verdict}
        atomic_write_text(args.results, json.dumps(_clean(doc), indent=1) + "\n")
        print(f"results: {args.results}")
    return 0 if verdict["passed"] else 1


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .._io import atomic_write_text
    from ..search.calibrate import calibrate, markdown
    from ..search.variants import VARIANTS, get_variant

    if args.list:
        for v in VARIANTS.values():
            settings = " ".join(f"{k}={val}" for k, val in v.settings.items())
            print(f"{v.name:14s} {v.why}\n{'':14s} {settings}" + (f" seeds={v.seeds}" if v.seeds > 1 else ""))
        return 0
    if args.reference is None:
        raise SearchError("edg search calibrate: name the reference results file (or --list the variants)")
    if not 1 <= args.n_boot <= 100_000:
        raise SearchError(f"--n-boot must be 1..100000, got {args.n_boot}")
    variants = [get_variant(n) for n in (args.variants or list(VARIANTS))]
    doc = _read_json(args.reference, "reference")
    _table(doc, args.reference, "map50")
    result = calibrate(doc, variants, args.zero_cost, args.cache, split=args.split, n_boot=args.n_boot,
                       seed=args.seed, where=f"reference {args.reference}")
    table = markdown(result)
    print(table, end="")
    if args.results:
        from ..search.compare import provenance
        from ..search.reference_report import _clean

        out = {**provenance(args.argv), "reference_file": args.reference, **result}
        atomic_write_text(args.results, json.dumps(_clean(out), indent=1) + "\n")
        atomic_write_text(Path(args.results).with_suffix(".md"), table)
        print(f"results: {args.results}")
    if result["study_proxy"] and not result["study_proxy"]["passed"]:
        print("the proxy a study would train is too slow to search (see its speed line)", file=sys.stderr)
        return 1
    return 0 if result["default"] else 1
