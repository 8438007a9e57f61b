"""Sub-commands that train and evaluate: data, train, eval, predict, ablation."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ..errors import ConfigError
from ._args import bounded, typed

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make a built-in synthetic data set (COCO format)")
    p.add_argument("kind", choices=("synthetic",))
    p.add_argument("--task", choices=("shapes", "multiscale"), default="shapes",
                   help="shapes: 1-4 large shapes (the tour's set); multiscale: the set where the neck decides "
                        "(docs/tasks.md): sizes over 4 octaves, context classes, clutter; train/val/test")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=bounded(int, 1, 1_000_000), default=None, help="default: 512 (multiscale 2048)")
    p.add_argument("--val", type=bounded(int, 0, 1_000_000), default=None, help="default: 128 (multiscale 256)")
    p.add_argument("--test", type=bounded(int, 0, 1_000_000), default=256, help="test images (multiscale only)")
    p.add_argument("--size", type=bounded(int, 16, 8192), default=None, help="image side (default 128; multiscale 192)")
    p.add_argument("--classes", type=bounded(int, 1, 10_000), default=3, help="classes (shapes only; multiscale has 10)")
    p.add_argument("--seed", type=bounded(int, 0, 2**31 - 1), default=0)
    p.add_argument("--workers", type=bounded(int, 1, 256), default=1,
                   help="processes writing images (multiscale only; the files do not depend on it)")
    p.set_defaults(handler=cmd_data)

    p = sub.add_parser("train", help="train a model spec on COCO-format or synthetic data")
    p.add_argument("model", metavar="SPEC", nargs="?", default="efficientdet-d0",
                   help="built-in model name or spec file (default: the config's model, else efficientdet-d0)")
    p.add_argument("--config", default=None, metavar="RUN.yaml",
                   help="a run file (see examples/custom.yaml); flags given here override it; the effective "
                        "run is written back to OUT/run.yaml")
    _train_args(p)
    p.set_defaults(handler=cmd_train, train_parser=p)

    p = sub.add_parser("eval", help="COCO mAP of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="data folder (DIR/val/annotations.json + images)")
    p.add_argument("--split", default="val")
    p.add_argument("--batch-size", type=bounded(int, 1, 4096), default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--results", default=None, help="write the predictions as COCO results JSON")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("predict", help="draw a checkpoint's detections on images (PNG)")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--score", type=bounded(float, 0, 1), default=0.3)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("ablation", help="train several graphs in one detector, with seeds, at equal width or cost, "
                                        "and compare them")
    p.add_argument("--graphs", nargs="+", default=["fpn", "panet", "nasfpn", "bifpn"])
    p.add_argument("--model", default="tiny-bifpn", help="the spec every graph is put into")
    p.add_argument("--seeds", nargs="+", type=bounded(int, 0, 2**31 - 1), default=None, metavar="S",
                   help="train every graph once per seed, in OUT/GRAPH/seed-S; the table gives each graph's "
                        "mean, sample SD and range (default: --seed alone, in OUT/GRAPH; --seed still seeds "
                        "the synthetic data)")
    p.add_argument("--match", choices=("none", "flops", "width"), default="none",
                   help="none: every graph at the spec's width and depth; flops: each graph's feature-network "
                        "FLOPs matched to the first graph's by changing its repeat first (the paper's "
                        "ablation), then its width; width: width first")
    p.add_argument("--tolerance", type=bounded(float, 0, 1, lo_open=True), default=0.10,
                   help="--match: largest relative FLOPs difference to the first graph (a graph outside it "
                        "is an error, before anything trains)")
    p.add_argument("--gate", action="store_true",
                   help="the noise-floor gate (edg search reference's): the first graph (the no-fusion floor) "
                        "is worst by more than 3 pooled seed SDs and the others' means spread over more than "
                        "2; exit 1 when it fails (needs 2+ seeds, 3+ graphs)")
    _train_args(p, default_out="runs/ablation")
    p.set_defaults(graph=None)
    p.set_defaults(handler=cmd_ablation)


AMP_MODES = ("auto", "off", "bf16", "fp16")  # train.loop.AMP_MODES, without importing torch for --help


def _train_args(p: argparse.ArgumentParser, default_out: str = "runs/train") -> None:
    p.add_argument("--data", default="synthetic", help="data folder, or 'synthetic' (made under OUT/data)")
    p.add_argument("--train-data", nargs=2, default=None, metavar=("ANNOTATIONS", "IMAGES"),
                   help="the training split as a COCO file and its image folder, instead of --data's")
    p.add_argument("--val-data", nargs=2, default=None, metavar=("ANNOTATIONS", "IMAGES"),
                   help="the validation split as a COCO file and its image folder, instead of --data's")
    p.add_argument("--out", default=default_out)
    p.add_argument("--epochs", type=bounded(int, 1, 100_000), default=10)
    p.add_argument("--batch-size", type=bounded(int, 1, 4096), default=16, help="global batch (split across processes)")
    p.add_argument("--lr", type=bounded(float, 0, 1e30, lo_open=True), default=None)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--backbone-lr", type=bounded(float, 0, 1e6), default=1.0, metavar="X",
                   help="the backbone's learning rate as a multiple of --lr (0: frozen; default 1.0)")
    p.add_argument("--backbone-lr-epochs", type=bounded(float, 0, 1e6), default=None, metavar="E",
                   help="apply --backbone-lr for the first E epochs only, then the backbone trains at --lr "
                        "(default: the whole run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=bounded(int, 0, 2**31 - 1), default=0)
    p.add_argument("--image-size", type=bounded(int, 32, 8192), default=None)
    p.add_argument("--graph", default=None, help="replace the spec's graph")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="start from the backbone weights of CKPT (an edg train last.pt with the same backbone)")
    p.add_argument("--freeze-bn", action="store_true")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (torchrun)")
    p.add_argument("--eval-every", type=bounded(int, 1, 100_000), default=1)
    p.add_argument("--max-steps", type=bounded(int, 1, 10**9), default=None, help="stop after this many steps (testing)")
    p.add_argument("--save-every", type=bounded(int, 1, 10**9), default=None, metavar="STEPS",
                   help="also save last.pt every STEPS steps, so a long epoch is not lost whole (default: per epoch)")
    p.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="mixed precision: auto (CUDA: bf16 where the GPU has it, else fp16 with loss scaling; "
                        "CPU: off), off, bf16 or fp16 (both also on CPU)")
    p.add_argument("--class-names", nargs="+", default=None, metavar="NAME",
                   help="display names of the data's categories, in category-id order (default: the data's)")
    p.add_argument("--workers", type=bounded(int, 0, 256), default=None, metavar="N",
                   help="data loading processes (0: load in the training process; default: up to 2, "
                        "one per CPU core)")
    p.add_argument("--log-every", type=bounded(int, 1, 10**9), default=10, help="steps between metrics lines")
    p.add_argument("--synthetic-train", type=bounded(int, 1, 1_000_000), default=512)
    p.add_argument("--synthetic-val", type=bounded(int, 0, 1_000_000), default=128)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--results", default=None, metavar="FILE",
                   help="write the metrics, per-epoch curves, command, versions, date and machine to FILE (JSON; "
                        "the curves picture beside it)")
    p.add_argument("--require", action="append", default=[], metavar="METRIC>=VALUE",
                   help="exit 1 unless the final metric meets this (repeatable; e.g. map50>=0.5); "
                        "in an ablation every graph's mean over its seeds must meet it")


def _config(args: argparse.Namespace, **override):
    from ..train import TrainConfig

    fields = dict(
        model=args.model, data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, optimizer=args.optimizer, device=args.device, seed=args.seed, image_size=args.image_size,
        graph=args.graph, resume=args.resume, freeze_bn=args.freeze_bn, sync_bn=args.sync_bn,
        eval_every=args.eval_every, max_steps=args.max_steps, save_every=args.save_every, synthetic_train=args.synthetic_train,
        synthetic_val=args.synthetic_val, quiet=args.quiet, log_every=args.log_every, amp=args.amp,
        class_names=tuple(args.class_names) if args.class_names else None,
        train_data=args.train_data, val_data=args.val_data, init=args.init,
    )
    if args.workers is not None:
        fields["workers"] = args.workers
    return TrainConfig(**{**fields, **override})


def run_config(args: argparse.Namespace):
    """The run ``edg train`` ARGS asks for: the ``--config`` file's values, and over them
    every flag typed on the command line (even one that repeats its default)."""
    from dataclasses import fields

    from ..train.config_file import read_train_file, train_config

    config = _config(args)
    if not args.config:
        return config
    given = typed(args.train_parser, args.argv[args.argv.index("train") + 1:])
    flags = {f.name: getattr(config, f.name) for f in fields(config)}  # not asdict: it unpacks `augment`
    return train_config(read_train_file(args.config), flags, given)


def cmd_data(args: argparse.Namespace) -> int:
    if args.task == "multiscale":
        from ..train.multiscale import MultiscaleConfig, make_multiscale

        n_train, n_val = args.train or 2048, 256 if args.val is None else args.val
        cfg = MultiscaleConfig(image_size=args.size or 192)
        out = make_multiscale(args.out, n_train, n_val, args.test, args.seed, cfg, args.workers)
        print(f"wrote {out}/train ({n_train} images), {out}/val ({n_val}, the search-val split) and "
              f"{out}/test ({args.test}, for final claims only), COCO format")
        return 0
    from ..train import make_synthetic

    n_train, n_val = args.train or 512, 128 if args.val is None else args.val
    out = make_synthetic(args.out, n_train, n_val, args.size or 128, args.classes, args.seed)
    print(f"wrote {out}/train ({n_train} images) and {out}/val ({n_val} images), COCO format")
    return 0


def _requirements(args: argparse.Namespace):
    from ..train import parse_requirement

    return [parse_requirement(r) for r in args.require]  # bad syntax: exit 2 before training


def _report(results: list[dict]) -> int:
    failed = [r for r in results if not r["passed"]]
    for r in results:
        where = f"{r['graph']}: " if "graph" in r else ""
        print(f"{'ok' if r['passed'] else 'FAILED'}: {where}{r['metric']} = {r['measured']} "
              f"(required {r['op']} {r['value']:g})", file=sys.stderr if not r["passed"] else sys.stdout)
    return 1 if failed else 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..train import train, write_results
    from ..train.config_file import write_train_file
    from ..train.progress import MetricsLog

    requirements = _requirements(args)
    config = run_config(args)
    try:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        write_train_file(config, Path(config.out) / "run.yaml")
    except OSError as e:
        raise ConfigError(f"--out {config.out}: cannot write there ({e.strerror})") from None
    summary = train(config)  # TrainingDiverged: main() prints it and exits 1
    checked = [r.check(summary) for r in requirements]
    if args.results and "interrupted" in summary:
        # a stopped run's figures are not the run's: its results file waits for --resume
        print(f"results: not written ({args.results}): the run was stopped before its end", file=sys.stderr)
    elif args.results:
        curves = [r for r in MetricsLog(Path(config.out) / "metrics.jsonl").read() if r.get("type") == "epoch"]
        path = write_results(args.results, command=["edg", *args.argv], config=asdict(config), metrics=summary,
                             curves=curves, requirements=checked, curves_png=summary.get("curves"))
        print(f"results: {path}")
    if "map50" in summary:
        print(f"done: {summary['step']} steps; val mAP@[.5:.95] {summary['map']:.3f}, mAP@0.5 {summary['map50']:.3f}")
    written = "  ".join(f"{k}: {summary[k]}" for k in ("checkpoint", "curves") if k in summary)
    print(written or "no checkpoint written")
    if "interrupted" in summary:
        print(f"stopped by {summary['interrupted']} after step {summary['stopped_at_step']}; saved "
              f"{summary.get('checkpoint', '(nothing)')}; continue with --resume", file=sys.stderr)
        return 128 + int(getattr(signal, summary["interrupted"]))
    return _report(checked)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..model import load_model
    from ..train import CocoDetection, evaluate, resolve_data
    from ..train.loop import _device

    model = load_model(args.checkpoint)
    ann, img = resolve_data(args.data, args.split)
    data = CocoDetection(ann, img, model.spec.image_size, train=False)
    print(f"{args.split} data: {data.report}", file=sys.stderr)
    metrics = evaluate(model, data, args.batch_size, str(_device(args.device)),
                       Path(args.results) if args.results else None)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        names = {"map": "AP", "map50": "AP50", "map75": "AP75", "map_small": "AP_small",
                 "map_medium": "AP_medium", "map_large": "AP_large"}
        print("  ".join(f"{names[k]} {v:.3f}" for k, v in metrics.items() if k in names))
        classes = [k.removeprefix("ap50/") for k in metrics if k.startswith("ap50/")]
        if classes:
            width = max(map(len, classes))
            print(f"{'class':<{width}}   AP50  found  named right (of those found)")
            for c in classes:
                print(f"{c:<{width}}  {metrics[f'ap50/{c}']:.3f}  {metrics.get(f'found/{c}', 0):.3f}  "
                      f"{metrics.get(f'named/{c}', 0):.3f}")
    if args.results:
        print(f"predictions: {args.results}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..model import load_model
    from ..train.evaluate import draw_detections
    from ..train.predict import predict

    model = load_model(args.checkpoint)
    labels = model.class_names or [str(i) for i in range(model.spec.num_classes)]
    names = {i + 1: name for i, name in enumerate(labels)}
    out = Path(args.out)
    for path in map(Path, args.images):
        det = predict(model, [path], score_threshold=args.score)[0]
        dets = [{"bbox": [x0, y0, x1 - x0, y1 - y0], "score": s, "category_id": label + 1}
                for (x0, y0, x1, y1), s, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                                      det["labels"].tolist())]
        target = draw_detections(path, dets, names, out / f"{path.stem}_pred.png", args.score)
        found = ", ".join(f"{names[d['category_id']]} {d['score']:.2f}" for d in dets[:5])
        print(f"{path}: {len(dets)} detections{' (' + found + (', ...' if len(dets) > 5 else '') + ')' if dets else ''}"
              f" -> {target}")
    return 0


def cmd_ablation(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .._io import atomic_write_text
    from ..search import ablation as ab
    from ..train.loop import _device

    requirements = _requirements(args)
    per_seed = args.seeds is not None
    seeds = list(args.seeds) if per_seed else [args.seed]
    for what, items in (("--graphs", args.graphs), ("--seeds", seeds)):
        twice = sorted({str(x) for x in items if items.count(x) > 1})
        if twice:
            raise ConfigError(f"{what} names {', '.join(twice)} more than once (each run needs its own folder)")
    if args.gate and len(seeds) < 2:
        raise ConfigError("--gate needs at least 2 seeds (give --seeds) to measure the seed noise")
    if args.gate and len(args.graphs) < 3:
        raise ConfigError("--gate needs at least 3 graphs: the no-fusion floor first, then the networks whose "
                          "spread it checks")
    # every graph's scale is counted before anything trains: a graph that cannot be matched
    # is reported now, not found after hours at a wrong cost
    scales = ab.plan_scales(args.model, args.graphs, args.match, args.tolerance, args.image_size)
    missed = [s for s in scales if not s.within]
    if missed:
        first = scales[0]
        raise ConfigError(
            f"--match {args.match}: cannot bring the feature-network FLOPs of {', '.join(s.graph for s in missed)} "
            f"within ±{100 * args.tolerance:g}% of {first.graph}'s ({first.fpn_flops:,}) at any repeat up to "
            "twice the spec's (8 at least) and width up to 4x the spec's; at the spec's scale: "
            + "; ".join(f"{s.graph} repeat {s.repeat}, width {s.channels}: {s.fpn_flops:,} ({s.diff_pct:+.1f}%)"
                        for s in missed)
            + ". Give a larger --tolerance, the other --match, or leave these graphs out")
    out = Path(args.out)
    data = args.data
    if data == "synthetic" and not args.train_data:
        from ..train import make_synthetic

        data = str(out / "data")
        if not (Path(data) / "val" / "annotations.json").exists():
            make_synthetic(data, args.synthetic_train, args.synthetic_val, args.image_size or 128, 3, args.seed)
    with_test = ab.has_test_split(data)
    device = str(_device(args.device))
    if args.match != "none":
        for s in scales:
            print(f"{s.graph}: repeat {s.repeat}, width {s.channels}: feature-net FLOPs {s.fpn_flops:,} "
                  f"({s.diff_pct:+.1f}% vs {scales[0].graph})")
    runs, profiles = [], {}
    for scale in scales:
        sized = {"fpn_repeat": scale.repeat, "fpn_channels": scale.channels} if args.match != "none" else {}
        for seed in seeds:
            run = ab.run_dir(out, scale.graph, seed, per_seed)
            cfg = _config(args, data=data, out=str(run), graph=scale.graph, seed=seed, **sized)
            result = ab.run_one(cfg, scale, with_test, device)
            if "interrupted" in result:
                print(f"stopped by {result['interrupted']} in {run}; continue the ablation with --resume",
                      file=sys.stderr)
                return 128 + int(getattr(signal, result["interrupted"]))
            runs.append(result)
            if scale.graph not in profiles:  # every seed trains the same network
                profiles[scale.graph] = ab.profile_run(run)
    rows = ab.graph_rows(scales, runs, profiles, args.match, with_test)
    scale_note = {"none": "at the spec's width and depth",
                  "flops": f"at matched feature-network FLOPs (±{100 * args.tolerance:g}%, repeat changed first)",
                  "width": f"at matched feature-network FLOPs (±{100 * args.tolerance:g}%, width changed first)"}
    title = (f"Ablation: graphs in `{args.model}` {scale_note[args.match]}, {args.epochs} epochs, "
             f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; mAP on the validation split"
             + (" (test: the data's test split, the final EMA checkpoint)" if with_test else "")
             + "; SD = sample SD over seeds; FLOPs = multiply-adds (fvcore convention), Δ against the first graph.")
    table = ab.table_markdown(rows, title)
    noise = ab.seed_noise(rows) if len(seeds) > 1 else None
    gate = None
    if noise is not None:
        table += f"\nPooled seed SD of val mAP@0.5: {noise:.4f}.\n"
    if args.gate:
        from ..search.reference import gate as noise_gate

        gate = noise_gate([{"network": r["graph"], "val": r["val"]["map50"]} for r in rows], floor=tuple(args.graphs),
                          min_seeds=len(seeds))
        verdict = "passed" if gate["passed"] else "FAILED"
        table += (f"\nNoise-floor gate {verdict}: {args.graphs[0]} worst by {gate.get('margin_in_sd') or 0:.2f} pooled "
                  f"SDs (needs > {gate['worst_by_sd']:g}); the others spread over {gate.get('spread_in_sd') or 0:.2f} "
                  f"(needs > {gate['spread_by_sd']:g}).\n" if gate["passed"] is not None
                  else f"\nNoise-floor gate not decided: {gate['reason']}.\n")
    atomic_write_text(out / "table.md", table)
    atomic_write_text(out / "table.json", json.dumps(rows, indent=2))
    print(table)
    print(f"wrote {out / 'table.md'} and {out / 'table.json'}")
    checked = [{"graph": r["graph"], **q.check(r)} for r in rows for q in requirements]
    if args.results:
        from ..train import write_results

        config = {**asdict(_config(args, data=data)), "graphs": args.graphs, "seeds": seeds, "match": args.match,
                  "tolerance": args.tolerance}
        path = write_results(args.results, command=["edg", *args.argv], config=config, rows=rows,
                             requirements=checked,
                             metrics={"pooled_seed_sd_map50": noise, **({"gate": gate} if gate else {})})
        print(f"results: {path}")
    code = _report(checked)
    if gate is not None and not gate["passed"]:
        print("noise-floor gate: FAILED" if gate["passed"] is False else f"noise-floor gate: {gate['reason']}",
              file=sys.stderr)
        return 1
    return code
