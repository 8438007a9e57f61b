"""``edg search ...``: validate spaces, sample them, run studies, read their results."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import EdgError

__all__ = ["register"]


class _BadArgs(EdgError):
    pass


def _positive(name: str, cast=int, low=1, high=None):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r}: not a number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{name} {value}: allowed {low}..{high if high is not None else 'inf'}")
        return value

    return parse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="architecture search over declared spaces (Optuna studies)")
    s = p.add_subparsers(dest="search_command", metavar="SEARCH_COMMAND", required=True,
                         help="validate, sample, run, status, best, plot, compare, benchmark, reference, match, fidelity, "
                              "calibrate")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    q = s.add_parser("validate", help="check search-space files; exit 2 on any error", formatter_class=fmt)
    q.add_argument("spaces", nargs="+", metavar="NAME_OR_PATH")
    q.set_defaults(handler=cmd_validate)

    q = s.add_parser("sample", help="draw candidates of a space (no training): graphs, costs, rejections",
                     formatter_class=fmt)
    q.add_argument("space", metavar="SPACE")
    q.add_argument("-n", type=_positive("-n", high=100_000), default=1000, help="candidates to draw")
    q.add_argument("--seed", type=int, default=0, help="random seed")
    q.add_argument("--point", default=None, help="instead of sampling, show this named point of the space")
    q.add_argument("-o", "--output", default=None, help="write the point's (or the last candidate's) graph YAML here")
    q.add_argument("--json", action="store_true", help="machine-readable summary")
    q.set_defaults(handler=cmd_sample)

    q = s.add_parser("run", help="run (or join) a study", formatter_class=fmt)
    q.add_argument("space", metavar="SPACE", help="built-in space name or space file")
    _study_args(q)
    q.add_argument("--trials", type=_positive("--trials", high=100_000), default=20,
                   help="trials in the study (all workers together)")
    q.add_argument("--workers", type=_positive("--workers", high=64), default=1, help="local worker processes")
    q.add_argument("--sampler", choices=("random", "tpe", "nsga2", "evolution"), default="tpe")
    q.add_argument("--seed", type=int, default=0, help="sampler seed")
    q.add_argument("--objective", choices=("pareto", "accuracy"), default="pareto",
                   help="pareto: max proxy metric and min FLOPs; accuracy: max metric (pruning allowed)")
    q.add_argument("--max-flops", type=float, default=None, help="constraint: feature-network FLOPs at most this")
    q.add_argument("--max-params", type=float, default=None, help="constraint: feature-network parameters at most")
    q.add_argument("--pruner", choices=("hyperband", "halving", "median", "none"), default=None,
                   help="stops weak trials after each proxy epoch (--objective accuracy only; default hyperband)")
    q.add_argument("--no-seed-points", action="store_true", help="do not enqueue the space's known points")
    q.add_argument("--proxy", action="append", default=[], metavar="KEY=VALUE",
                   help="proxy-task setting (repeatable), e.g. --proxy epochs=4")
    q.add_argument("--calibration", default=None, metavar="FILE",
                   help=CALIBRATION_HELP)
    q.add_argument("--graph", default=None, help="base topology of a scaling space")
    q.add_argument("--cache", default=None, help="share proxy results with other studies through this file")
    q.add_argument("--proxy-cache", default=None,
                   help="folder of the proxy's frozen-backbone features (default OUT/proxy-cache; shareable)")
    q.add_argument("--heartbeat", type=_positive("--heartbeat", high=3600), default=10,
                   help="seconds between heartbeats (database storages)")
    q.add_argument("--population", type=_positive("--population", low=2, high=1000), default=12,
                   help="population of the evolution and NSGA-II samplers; TPE's initial random trials")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(handler=cmd_run)

    q = s.add_parser("status", help="trials done, pruned, failed, rejected; the best so far", formatter_class=fmt)
    _study_args(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=cmd_status)

    q = s.add_parser("best", help="write the best graphs (the Pareto front) as graph-spec YAML", formatter_class=fmt)
    _study_args(q)
    q.add_argument("--top", type=_positive("--top", high=1000), default=5)
    q.add_argument("-o", "--output", required=True, help="folder for the YAML files")
    q.set_defaults(handler=cmd_best)

    q = s.add_parser("plot", help="Pareto front, history and parameter importances as PNGs", formatter_class=fmt)
    _study_args(q)
    q.add_argument("-o", "--output", default=None, help="folder for the PNGs (default: the run folder)")
    q.set_defaults(handler=cmd_plot)

    q = s.add_parser("compare", help="found graphs vs FPN/PANet/BiFPN at matched FLOPs, re-trained with seeds",
                     formatter_class=fmt)
    _study_args(q)
    q.add_argument("--top", type=_positive("--top", high=20), default=3, help="found graphs to re-train")
    q.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="proxy seeds of the re-training")
    q.add_argument("--baselines", nargs="+", default=["fpn", "panet", "bifpn"], help="built-in graphs to match")
    q.add_argument("--tolerance", type=float, default=0.10, help="allowed FLOPs mismatch (fraction)")
    q.add_argument("--match", choices=("depth", "width"), default="depth",
                   help="which knob matches a baseline's FLOPs first: repeat it (the paper's ablation) or widen it")
    q.add_argument("--epochs", type=_positive("--epochs", low=0, high=1000), default=None,
                   help="proxy epochs of every run here (default: the study's)")
    q.add_argument("--results", default=None, help="write the comparison (JSON) here; a .md table beside it")
    q.add_argument("--proxy-cache", default=None, help="folder of the proxy's frozen-backbone features")
    q.set_defaults(handler=cmd_compare)

    q = s.add_parser("benchmark", help="samplers against each other at an equal trial budget, several seeds",
                     formatter_class=fmt)
    q.add_argument("space", metavar="SPACE")
    q.add_argument("--samplers", nargs="+", default=["random", "tpe", "evolution"],
                   choices=("random", "tpe", "nsga2", "evolution"))
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--trials", type=_positive("--trials", high=10_000), default=20, help="trials per study")
    q.add_argument("--proxy", action="append", default=[], metavar="KEY=VALUE", help="proxy-task setting")
    q.add_argument("--calibration", default=None, metavar="FILE", help=CALIBRATION_HELP)
    q.add_argument("--out", default="runs/search-benchmark", help="folder for the studies and the shared cache")
    q.add_argument("--proxy-cache", default=None, help="folder of the proxy's frozen-backbone features")
    q.add_argument("--population", type=_positive("--population", low=2, high=1000), default=6,
                   help="evolution's population and TPE's initial random trials")
    q.add_argument("--results", default=None, help="write the comparison (JSON) here; a .png beside it")
    q.set_defaults(handler=cmd_benchmark)

    from .reference_commands import register_match, register_search

    register_search(s)
    register_match(s)
    from .fidelity_commands import register_search as register_fidelity

    register_fidelity(s)


CALIBRATION_HELP = ("an edg search calibrate results file: train its cheapest proxy variant that clears the bar (else "
                    "the one of best tau) on the data of the reference it was calibrated against, and maximize its "
                    "trial score instead of the space's metric and proxy settings (--proxy still applies on top)")


def _study_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--out", default="runs/search", help="run folder (journal storage, proxy cache, outputs)")
    q.add_argument("--study", default=None, help="study name (default: the space's name)")
    q.add_argument("--storage", default=None,
                   help="storage URL: a journal file (default OUT/study.journal) or postgresql://user@host/db")


def _proxy_pairs(items: list[str]) -> tuple:
    pairs = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise _BadArgs(f"--proxy {item!r}: expected KEY=VALUE, e.g. --proxy epochs=4")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def cmd_validate(args: argparse.Namespace) -> int:
    from ..errors import SpecError
    from ..search import load_space

    problems, ok = [], 0
    for ref in args.spaces:
        try:
            space = load_space(ref)
        except SpecError as e:
            problems.extend(e.problems)
            continue
        ok += 1
        n = len(space.spec.params)
        print(f"ok  {ref}: space {space.name!r} ({space.spec.kind}; {n} declared parameters, "
              f"{len(space.spec.points)} known points)")
    if problems:
        raise SpecError(problems)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import random
    import time

    from .._io import atomic_write_text
    from ..graph import graph_to_yaml
    from ..search import candidate_cost, load_space, point_candidate, random_ask, sample

    space = load_space(args.space)
    if args.point:
        cand = point_candidate(space, args.point)
        cost = candidate_cost(cand, space.spec.cost)
        text = graph_to_yaml(cand.graph)
        if args.output:
            atomic_write_text(args.output, text)
            print(f"wrote {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        print(f"point {args.point}: {cost.params:,} params, {cost.flops:,} FLOPs (feature network x{cand.repeat} at "
              f"{cand.channels} channels, {cand.image_size} px; multiply-adds)", file=sys.stderr)
        return 0
    rng = random.Random(args.seed)
    keys, rejected, reasons, times, last = set(), 0, {}, [], None
    t0 = time.perf_counter()
    for _ in range(args.n):
        cand = sample(space, random_ask(rng))
        if cand.rejected:
            rejected += 1
            reasons[cand.reason] = reasons.get(cand.reason, 0) + 1
            continue
        t = time.perf_counter()
        candidate_cost(cand, space.spec.cost)
        times.append(time.perf_counter() - t)
        keys.add(cand.key)
        last = cand
    total = time.perf_counter() - t0
    times.sort()
    result = {"space": space.name, "drawn": args.n, "valid": args.n - rejected, "rejected": rejected,
              "distinct": len(keys), "cost_ms_median": round(1000 * times[len(times) // 2], 3) if times else None,
              "seconds": round(total, 2), "reasons": reasons}
    if args.output and last is not None:
        atomic_write_text(args.output, graph_to_yaml(last.graph))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{space.name}: {args.n} drawn, {result['valid']} valid ({result['distinct']} distinct networks), "
          f"{rejected} rejected; cost counted in {result['cost_ms_median']} ms per candidate (median); {total:.1f} s")
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  rejected {n}x: {reason}")
    return 0


def _config(args: argparse.Namespace, space: str | None = None):
    fields = {"out": args.out, "study": args.study, "storage": args.storage}
    if space is not None:
        fields.update(space=space, sampler=args.sampler, seed=args.seed, trials=args.trials,
                      objective=args.objective, max_flops=args.max_flops, max_params=args.max_params,
                      pruner=args.pruner, seed_points=not args.no_seed_points, proxy=_proxy_pairs(args.proxy),
                      graph=args.graph, cache=args.cache, proxy_cache=args.proxy_cache, heartbeat=args.heartbeat, population=args.population,
                      quiet=args.quiet, calibration=args.calibration)
    return fields


def cmd_run(args: argparse.Namespace) -> int:
    from ..search import StudyConfig, run

    cfg = StudyConfig(**_config(args, args.space))
    if not args.quiet:
        print(f"study {cfg.study_name!r}: {cfg.trials} trials of space {args.space!r}, sampler {cfg.sampler}, "
              f"objective {cfg.objective}, {args.workers} worker(s); storage "
              f"{cfg.storage or Path(cfg.out) / 'study.journal'}")
    result = run(cfg, args.workers)
    _print_summary(result)
    return 0


def _print_summary(result: dict) -> None:
    counts = result["counts"]
    order = ("done", "reused", "cached", "pruned", "over_budget", "rejected", "failed", "running", "waiting",
             "stale", "interrupted", "requeued")
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
    print(f"study {result['study']!r}: {result['finished']}/{result['budget']} finished ({', '.join(parts) or 'none'})")
    if "best" in result:
        b = result["best"]
        print(f"best: trial {b['trial']}, metric {b['metric']:.4f}, {b['flops'] / 1e9:.3f} GFLOPs (multiply-adds)")


def _existing(args: argparse.Namespace):
    from ..search import load_study

    return load_study(args.out, args.study, args.storage)


def cmd_status(args: argparse.Namespace) -> int:
    from ..search.study import summary

    study, cfg = _existing(args)
    result = summary(study, cfg)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_summary(result)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from ..search import write_best

    study, cfg = _existing(args)
    written = write_best(study, cfg, args.output, args.top)
    for row in written:
        print(f"{row['file']}: trial {row['trial']}, metric {row['metric']:.4f}, {row['flops'] / 1e9:.3f} GFLOPs, "
              f"{row['params']:,} params")
    print(f"wrote {len(written)} graph(s) and front.json to {args.output}", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ..search import plot_study

    study, cfg = _existing(args)
    for path in plot_study(study, cfg, args.output or args.out):
        print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .._io import atomic_write_text
    from ..search.compare import compare_study, compare_table, write_results

    if not 0 < args.tolerance < 1:
        raise _BadArgs(f"--tolerance {args.tolerance}: allowed between 0 and 1")
    study, cfg = _existing(args)
    if args.proxy_cache:
        from dataclasses import replace

        cfg = replace(cfg, proxy_cache=args.proxy_cache)
    result = compare_study(study, cfg, top=args.top, seeds=args.seeds, baselines=args.baselines,
                           tolerance=args.tolerance, epochs=args.epochs, match=args.match,
                           say=lambda text: print(text, file=sys.stderr, flush=True))
    table = compare_table(result)
    print(table)
    if args.results:
        path = write_results(args.results, result)
        atomic_write_text(Path(args.results).with_suffix(".md"), table)
        print(f"wrote {path} and {Path(args.results).with_suffix('.md')}", file=sys.stderr)
    if result["unmatched"]:
        print(f"error: no scale of {', '.join(result['unmatched'])} is within {100 * args.tolerance:.0f}% of the "
              "found graph's FLOPs", file=sys.stderr)
        return 1
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from ..search.compare import benchmark_samplers, plot_benchmark, write_results

    result = benchmark_samplers(args.space, args.samplers, args.seeds, args.trials, Path(args.out),
                                _proxy_pairs(args.proxy), say=lambda text: print(text, file=sys.stderr, flush=True),
                                proxy_cache=args.proxy_cache, population=args.population,
                                calibration=args.calibration)
    print(f"{'sampler':<10} {'best (mean, min-max)':<28} {'hypervolume (mean, min-max)':<30}")
    for name, r in result["by_sampler"].items():
        b, h = r["best"], r["hypervolume"]
        print(f"{name:<10} {b['mean']:.4f} ({b['min']:.4f}-{b['max']:.4f}){'':<6} "
              f"{h['mean']:.4f} ({h['min']:.4f}-{h['max']:.4f})")
    for name, v in result["verdicts"].items():  # by seed range: no claim inside the spread
        print(f"{name} against random: best metric {v['best']}, hypervolume {v['hypervolume']}")
    if args.results:
        path = write_results(args.results, result)
        png = plot_benchmark(result, Path(args.results).with_suffix(".png"))
        print(f"wrote {path} and {png}", file=sys.stderr)
    unfinished = [f"{r['sampler']}-s{r['seed']}" for r in result["runs"] if r["finished"] < args.trials]
    if unfinished:
        print(f"error: studies {', '.join(unfinished)} did not finish their trials", file=sys.stderr)
        return 1
    return 0
