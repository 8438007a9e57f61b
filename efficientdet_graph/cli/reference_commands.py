"""``edg search reference``: build (or join, or report) a reference table of trained networks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import EdgError
from ..search.verdicts import MATCH_WAYS

__all__ = ["register_search"]

TASK_SIZES = {"multiscale": (2048, 512, 512)}  # train, search-val, test images of a built-in task


class _BadArgs(EdgError):
    pass


def register_search(s: argparse._SubParsersAction) -> None:
    q = s.add_parser(
        "reference", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="train networks end-to-end with the reference schedule, seeds each: the table searches are judged by")
    q.add_argument("space", metavar="SPACE", nargs="?", default=None,
                   help="search space whose points and sampled networks join the table (none: the floor only)")
    q.add_argument("--out", default="runs/reference", help="build folder: jobs, checkpoints, journal storage")
    q.add_argument("--task", default="multiscale", choices=sorted(TASK_SIZES),
                   help="built-in task, generated into OUT/data (ignored with --data)")
    q.add_argument("--data", default=None,
                   help="a COCO-format folder with train/, val/ (search-val) and test/ splits instead of --task")
    q.add_argument("--sampled", type=int, default=14, help="networks drawn from the space, spread over its FLOPs")
    q.add_argument("--sample-seed", type=int, default=0, help="seed of those draws")
    q.add_argument("--graphs", nargs="*", default=["nasfpn", "gfpn:1"],
                   help="graphs added to the table: NAME[:REPEAT][@WIDTH], NAME a built-in or a graph file (e.g. "
                        "one `edg search best` wrote); default repeat: a file's own, else the schedule's; default "
                        "width: the schedule's (GFPN's built-in is already 5 layers deep)")
    q.add_argument("--matched", nargs="*", default=[], metavar="GRAPH",
                   help="for each --graphs network, these baselines at its FLOPs (within --tolerance), once per "
                        "--match-by way (edg search match)")
    q.add_argument("--match-by", nargs="+", choices=MATCH_WAYS, default=None, metavar="WAY",
                   help="with --matched (default: depth width): depth (repeat the baseline) or width (widen it) "
                        "at the feature network's FLOPs; detector-depth or detector-width at the whole detector's "
                        "(a widened baseline's heads widen too)")
    q.add_argument("--tolerance", type=float, default=0.10, help="with --matched: allowed FLOPs mismatch")
    q.add_argument("--floor", nargs="*", default=["nofusion", "fpn", "panet", "bifpn"],
                   help="the noise-floor networks: the no-fusion neck first, then the fusing ones")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of every network")
    q.add_argument("--floor-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds of the floor networks")
    q.add_argument("--floor-only", action="store_true", help="only the floor networks (the noise-floor run)")
    q.add_argument("--schedule", action="append", default=[], metavar="KEY=VALUE",
                   help="reference-schedule setting (repeatable), e.g. --schedule epochs=5")
    q.add_argument("--storage", default=None, help="job storage: journal file (default OUT/jobs.journal) or "
                                                   "postgresql://... shared by several machines")
    q.add_argument("--workers", type=int, default=1, help="local worker processes (one core each)")
    q.add_argument("--device", default="cpu", help="where jobs train and are scored: cpu (default) or cuda[:N]; "
                   "not part of the schedule (float32 on both), recorded in each row")
    q.add_argument("--report", action="store_true", help="only write the results from what is finished")
    q.add_argument("--results", default=None, help="write the table (JSON) here; a .md table beside it")
    q.add_argument("--no-gate", action="store_true",
                   help="report the noise-floor gate but exit 0 when it fails (default: exit 1)")
    q.add_argument("--heartbeat", type=float, default=10.0, help="seconds between a job's heartbeats")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(handler=cmd_reference)


def register_match(s: argparse._SubParsersAction) -> None:
    q = s.add_parser(
        "match", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="baselines matched to a network's feature-network FLOPs at the reference schedule's scale, by depth "
             "and by width: the --graphs items that re-train them beside it")
    q.add_argument("target", metavar="TARGET", help="NAME[:REPEAT][@WIDTH]: a built-in graph or a graph file")
    q.add_argument("--baselines", nargs="+", default=["fpn", "panet", "bifpn"], help="graphs to match to it")
    q.add_argument("--by", nargs="+", choices=MATCH_WAYS, default=["depth", "width"], metavar="WAY",
                   help="depth: repeat the baseline (width kept where it can be); width: widen it at the schedule's "
                        "depth; both at the feature network's FLOPs. detector-depth, detector-width: the same "
                        "knobs at the whole detector's FLOPs (a widened baseline's heads widen too), to the "
                        "closest cost")
    q.add_argument("--num-classes", type=int, default=None,
                   help="classes of the detector's heads (detector-* ways); default: the built-in task's")
    q.add_argument("--tolerance", type=float, default=0.10, help="allowed FLOPs mismatch (fraction)")
    q.add_argument("--schedule", action="append", default=[], metavar="KEY=VALUE",
                   help="reference-schedule setting (the scale: image_size, channels, backbone, repeat)")
    q.set_defaults(handler=cmd_match)


def cmd_match(args: argparse.Namespace) -> int:
    from ..passes import load_graph
    from ..search.compare import match_at_schedule

    if not 0 < args.tolerance < 1:
        raise _BadArgs(f"--tolerance {args.tolerance}: allowed between 0 and 1")
    schedule = _schedule(args.schedule)
    name, repeat, width = _graph_item(args.target, schedule, flag="TARGET")
    if args.num_classes is None:
        from ..train.multiscale import MULTISCALE_CLASSES

        args.num_classes = len(MULTISCALE_CLASSES)
    if not 1 <= args.num_classes <= 10_000:
        raise _BadArgs(f"--num-classes {args.num_classes}: allowed 1..10000")
    result = match_at_schedule(load_graph(name), repeat, width, [(b, load_graph(b)) for b in args.baselines],
                               schedule, by=args.by, tolerance=args.tolerance, num_classes=args.num_classes)
    print(f"{args.target}: {result['target_flops'] / 1e6:.2f} MFLOPs (multiply-adds) of feature network at "
          f"{schedule.image_size} px, width {result['target_channels']}, backbone {schedule.backbone}"
          + (f"; {result['target_detector_flops'] / 1e6:.2f} MFLOPs the whole detector ({args.num_classes} "
             "classes)" if any(w.startswith("detector-") for w in args.by) else ""))
    for r in result["rows"]:
        mark = "" if r["within"] else f"  (outside {100 * args.tolerance:.0f}%)"
        print(f"  {r['item']:<16} by {r['way']:<14}  repeat {r['repeat']}, width {r['channels']}: "
              f"{r['flops'] / 1e6:.2f} MFLOPs{' (detector)' if r['on'] == 'detector' else ''} "
              f"({r['diff_pct']:+.1f}%){mark}")
    print("--graphs " + " ".join(dict.fromkeys(r["item"] for r in result["rows"])))
    return 0 if all(r["within"] for r in result["rows"]) else 1


def _schedule(items: list[str]):
    from dataclasses import fields

    from ..search.reference import Schedule

    types = {f.name: f.type for f in fields(Schedule)}
    values = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or key not in types:
            import difflib

            close = difflib.get_close_matches(key, types, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; settings: {', '.join(types)}"
            raise _BadArgs(f"--schedule {item!r}: expected KEY=VALUE with a schedule setting{hint}")
        kind = types[key] if isinstance(types[key], str) else types[key].__name__
        try:
            if kind == "bool":
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                values[key] = text.lower() in ("true", "1", "yes")
            elif kind == "int":
                values[key] = int(text)
            elif kind == "float":
                values[key] = float(text)
            else:
                values[key] = text
        except ValueError:
            raise _BadArgs(f"--schedule {item!r}: {key} takes a {kind}") from None
    return Schedule(**values)


def _data(args: argparse.Namespace) -> str:
    if args.data:
        from ..train.data import resolve_data

        for split in ("train", "val"):
            resolve_data(args.data, split)  # a DataError (exit 2) names what is missing
        return args.data
    from .._io import locked
    from ..train.multiscale import make_multiscale

    root = Path(args.out) / "data"
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / ".lock"):
        if not (root / "test" / "annotations.json").exists():
            n_train, n_val, n_test = TASK_SIZES[args.task]
            print(f"generating the {args.task} task into {root} ({n_train}/{n_val}/{n_test} images)", file=sys.stderr)
            make_multiscale(root, n_train, n_val, n_test, seed=0, workers=args.workers)
    return str(root)


def _networks(args: argparse.Namespace, schedule, num_classes: int | None = None
              ) -> tuple[list, set, dict[str, dict[str, list[str]]]]:
    """The command's networks, the floor's keys, and each --graphs network's key with the
    keys of the baselines matched to it (--matched), each with the ways it was matched
    (--match-by; the detector's ways count heads of ``num_classes`` classes)."""
    from ..passes import load_graph
    from ..search.reference import network_from_graph, space_networks

    floor = [network_from_graph(g, load_graph(g), schedule.repeat, "graph") for g in args.floor]
    nets, keys = list(floor), {n.key for n in floor}
    pairs: dict[str, dict[str, list[str]]] = {}
    if not args.floor_only:
        extra = []
        for item in args.graphs:
            name, repeat, width = _graph_item(item, schedule)
            label = Path(name).stem if name.endswith((".yaml", ".yml")) else name
            label += f"x{repeat}" if repeat != schedule.repeat else ""
            label += f"@{width}" if width else ""
            graph = load_graph(name)
            found = network_from_graph(label, graph, repeat, "graph", channels=width)
            extra.append(found)
            if args.matched:  # the baselines at this network's FLOPs, once per way
                from ..search.compare import match_at_schedule

                m = match_at_schedule(graph, repeat, width, [(b, load_graph(b)) for b in args.matched], schedule,
                                      by=getattr(args, "match_by", ("depth", "width")), tolerance=args.tolerance,
                                      num_classes=num_classes)
                for row in m["rows"]:
                    if not row["within"]:
                        raise _BadArgs(f"--matched {row['graph']}: no {row['by']} of it is within "
                                       f"{100 * args.tolerance:.0f}% of {label}'s {row['on']} FLOPs (closest: "
                                       f"{row['item']}, {row['diff_pct']:+.1f}%)")
                    base = network_from_graph(row["item"], load_graph(row["graph"]), row["repeat"], "matched",
                                              channels=row["channels"] if row["channels"] != schedule.channels
                                              else None)
                    extra.append(base)
                    pairs.setdefault(found.key, {}).setdefault(base.key, []).append(row["way"])
        space = space_networks(args.space, args.sampled, args.sample_seed) if args.space else []
        for net in extra + space:
            if net.key not in keys:  # the space's fpn/panet/bifpn points are the floor's networks
                keys.add(net.key)
                nets.append(net)
    return nets, {n.key for n in floor}, pairs


def _graph_item(item: str, schedule, flag: str = "--graphs") -> tuple[str, int, int | None]:
    """``NAME[:REPEAT][@WIDTH]``: a built-in graph or a graph file, its depth (default: a
    graph file's own ``repeat`` -- what ``edg search best`` writes --, else the schedule's)
    and its width (default: the schedule's)."""
    rest, at, width = item.rpartition("@") if "@" in item else (item, "", "")
    name, colon, rep = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if (colon and not (rep.isdigit() and 1 <= int(rep) <= 64)) or (at and not (width.isdigit() and 8 <= int(width)
                                                                                 <= 1024)) or not name:
        raise _BadArgs(f"{flag} {item!r}: expected NAME, NAME:REPEAT (1..64), NAME@WIDTH (8..1024) or "
                       "NAME:REPEAT@WIDTH; NAME a built-in graph or a graph file")
    if colon:
        repeat = int(rep)
    elif name.endswith((".yaml", ".yml")):
        from ..passes import load_graph

        repeat = int(load_graph(name).graph.get("repeat") or schedule.repeat)
    else:
        repeat = schedule.repeat
    return name, repeat, int(width) if at else None


def _interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C: the job in hand goes back to the queue on the way out."""
    raise KeyboardInterrupt


def _worker(args_dict: dict, index: int, keys: list[str]) -> int:
    """One local worker process (spawned): joins the build and works on the command's jobs
    (``keys``) until none is left."""
    import signal

    # SIGTERM from the parent: a job waiting (for the shared backbone, or for others) goes
    # back to the queue like one training (whose own handler finishes the step first)
    signal.signal(signal.SIGTERM, _interrupt)
    args = argparse.Namespace(**args_dict)
    build = _build(args)
    say = (lambda m: None) if args.quiet else (lambda m: print(f"[worker {index}] {m}", flush=True))
    try:
        return build.work(say=say, keys=set(keys))
    except KeyboardInterrupt:
        print(f"[worker {index}] stopped; its job is back in the queue", flush=True)
        return 0


def _build(args: argparse.Namespace):
    from ..search.reference import ReferenceBuild

    schedule = _schedule(args.schedule)
    name = f"reference-{Path(args.data).name if args.data else args.task}"
    return ReferenceBuild(name, args.out, _data(args), schedule, args.storage, heartbeat=args.heartbeat,
                          device=args.device)


def cmd_reference(args: argparse.Namespace) -> int:
    import multiprocessing
    import time

    from ..search.reference import job_key

    if args.workers < 1 or args.workers > 64:
        raise _BadArgs(f"--workers {args.workers}: allowed 1..64")
    if args.sampled < 0:
        raise _BadArgs(f"--sampled {args.sampled}: must be >= 0")
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise _BadArgs(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    if args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise _BadArgs(f"--device {args.device}: CUDA is not available on this machine")
    for flag, seeds in (("--seeds", args.seeds), ("--floor-seeds", args.floor_seeds)):
        if any(not 0 <= s < 2**31 for s in seeds) or len(set(seeds)) != len(seeds):
            raise _BadArgs(f"{flag} {' '.join(map(str, seeds))}: seeds must be distinct, 0..2147483647")
    if args.space is None and not args.floor_only and args.sampled:
        args.sampled = 0
    if not 0 < args.tolerance < 1:
        raise _BadArgs(f"--tolerance {args.tolerance}: allowed between 0 and 1")
    if len(args.floor) < 3 and args.floor:
        raise _BadArgs("--floor needs the no-fusion neck and at least two fusing networks")
    if args.match_by is not None and not args.matched:
        raise _BadArgs("--match-by says how --matched baselines are matched: name them with --matched")
    args.match_by = args.match_by or ["depth", "width"]
    build = _build(args)
    num_classes = None
    if args.matched and any(w.startswith("detector-") for w in args.match_by):
        from ..train.data import num_categories, resolve_data

        num_classes = num_categories(resolve_data(build.data, "train")[0])
    nets, floor_keys, pairs = _networks(args, build.schedule, num_classes)
    floor = [n for n in nets if n.key in floor_keys]
    rest = [n for n in nets if n.key not in floor_keys]
    # this command's jobs only: the same folder's queue may also hold a larger table's
    keys = ({job_key(n, s) for n in floor for s in args.floor_seeds}
            | {job_key(n, s) for n in rest for s in args.seeds})
    if not args.report:
        # the floor first, and seed-major: the first finished jobs already compare the networks
        added = build.add(floor, args.floor_seeds) + build.add(rest, args.seeds)
        counts = build.queue.counts(keys)
        print(f"{len(nets)} networks; {added} job(s) added; jobs: "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=sys.stderr)
        if args.workers == 1:
            build.work(say=(lambda m: None) if args.quiet else (lambda m: print(m, flush=True)), keys=keys)
        else:
            import signal

            # SIGTERM (a scheduler's stop) ends the children too: each finishes its step,
            # saves, and puts its job back in the queue
            signal.signal(signal.SIGTERM, _interrupt)
            ctx = multiprocessing.get_context("spawn")
            plain = {k: v for k, v in vars(args).items() if k not in ("handler",) and not callable(v)}
            procs = [ctx.Process(target=_worker, args=(plain, i, sorted(keys)), daemon=False)
                     for i in range(args.workers)]
            for p in procs:
                p.start()
            try:
                while any(p.is_alive() for p in procs):  # is_alive() reaps a dead child: no zombie
                    time.sleep(1.0)
            except KeyboardInterrupt:
                for p in procs:
                    p.terminate()  # SIGTERM: a clean stop of the job in flight
                for p in procs:
                    p.join(timeout=120)
                raise
            for p in procs:
                p.join()
            # a child killed mid-job leaves it RUNNING with a dead pid: finish what is left here
            build.work(say=(lambda m: None) if args.quiet else (lambda m: print(m, flush=True)), keys=keys)
    return _report(args, build, [n.name for n in nets if n.key in floor_keys], {n.key: n.name for n in nets}, pairs,
                   keys)


def _report(args: argparse.Namespace, build, floor: list[str], names: dict[str, str],
            pairs: dict[str, dict[str, list[str]]], keys: set[str]) -> int:
    from ..search.reference import gate, summarize
    from ..search.reference_report import write_reference_results
    from ..search.verdicts import matched_verdicts

    # this command's networks only: a --floor-only report of a folder that also holds the
    # full table's jobs shows the floor
    rows = [r for r in build.rows() if r["key"] in names]
    table = summarize(rows)
    verdict = gate(table, floor=tuple(floor), min_seeds=len(args.floor_seeds)) if floor else {"passed": None}
    counts = build.queue.counts(keys)  # this command's jobs, as its cost figures
    waiting = counts.get("waiting", 0) + counts.get("running", 0) + counts.get("not queued", 0)
    for s in table:
        print(f"{s['network']:<24} seeds {len(s['seeds'])}  val mAP@0.5 {s['val']['mean']:.3f} "
              f"(sd {s['val']['sd']:.3f})  test {s['test']['mean']:.3f}  fpn FLOPs {s['fpn_flops'] or 0:,}")
    print(f"gate: {json.dumps({k: verdict.get(k) for k in ('passed', 'margin_in_sd', 'spread_in_sd', 'reason')})}")
    # each found network against its FLOPs-matched baselines, on the split nothing was tuned on
    verdicts = matched_verdicts(table, pairs, split="test", names=names)
    for v in verdicts:
        gap = f"gap {v['gap']:+.3f} vs seed ranges {v['found_range']:.3f} / {v['baseline_range']:.3f}" \
            if "gap" in v and v["found_seeds"] > 1 and v["baseline_seeds"] > 1 else v.get("reason", "")
        print(f"{v['found']} against {v['baseline']} (by {v['matched_by']}; test): {v['outcome']} ({gap})")
    if args.results:
        path = write_reference_results(args.results, build, rows, table, verdict, counts, verdicts)
        print(f"results: {path}")
    if waiting:
        print(f"{waiting} of this command's jobs not finished: run it again without --report to go on"
              if args.report else f"{waiting} of this command's jobs not finished: run it again to go on",
              file=sys.stderr)
        return 0
    if verdict.get("passed") is False:
        print("the noise-floor gate FAILED: on this task and schedule the necks' differences do not clear the "
              "seed noise; change the task or the schedule, not the gate", file=sys.stderr)
        return 0 if args.no_gate else 1
    return 0
