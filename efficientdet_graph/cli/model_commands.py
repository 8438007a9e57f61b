"""Sub-commands on detectors: scale, profile, convert, prune."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import EdgError

from ._args import bounded

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", help="compound scaling: the EfficientDet family table")
    p.add_argument("--family", choices=("efficientdet",), default="efficientdet")
    p.add_argument("--phi", action="append", default=None, help="only these phi (repeatable; 0, 1, ..., 7x, 8)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_scale)

    p = sub.add_parser("profile", help="parameters and FLOPs per component and graph node")
    p.add_argument("model", nargs="?", metavar="MODEL", help="built-in model name, spec file or checkpoint")
    p.add_argument("--family", choices=("efficientdet",), help="D0-D7x beside the official counts")
    p.add_argument("--image-size", type=bounded(int, 1, 8192), default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--fvcore", action="store_true", help="also count with fvcore, the reference (builds and runs the model for real)")
    p.add_argument("--latency", action="store_true",
                   help="also measure eager and torch.compile latency and throughput on this machine")
    p.add_argument("--batch", type=int, nargs="+", default=[1], metavar="N", help="batch sizes for --latency")
    p.add_argument("--reps", type=int, default=10, help="timed runs per row for --latency (medians)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first for --latency")
    p.add_argument("--no-compile", action="store_true", help="--latency: eager only")
    p.add_argument("--backend", default="inductor", help="--latency: torch.compile backend")
    p.add_argument("--device", default=None, help="--latency: cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(handler=cmd_profile)

    p = sub.add_parser("models", help="the built-in model specs with their size and cost",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.set_defaults(handler=cmd_models)

    p = sub.add_parser("convert", help="load an effdet checkpoint into our model and save it",
                       description="Convert an effdet checkpoint. The network is named by --effdet-config "
                       "(every setting from effdet's config) or by --model (our spec) with --tf / --padding; "
                       "a checkpoint whose tensors fit more than one network is refused until it is named.")
    p.add_argument("checkpoint", help="effdet (efficientdet-pytorch) state dict or training checkpoint")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="our model: built-in name (efficientdet-d0) or spec file")
    which.add_argument("--effdet-config", metavar="NAME",
                       help="effdet's config name (efficientdet_d4, tf_efficientdet_d0, ...): backbone, padding, "
                            "levels, widths, fusion and anchors all from it (needs the effdet package)")
    p.add_argument("--tf", action="store_true",
                   help="with --model: a tf_efficientdet_* checkpoint: tf_efficientnet backbone, TF 'same' padding")
    p.add_argument("--padding", choices=("same", "symmetric"), default=None,
                   help="with --model: pooling padding, keeping the spec's backbone "
                        "(effdet's efficientdet_d4/d5: same)")
    p.add_argument("--num-classes", type=bounded(int, 1, 10_000), default=None, help="default: read from the checkpoint")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(handler=cmd_convert)

    p = sub.add_parser("prune", help="shrink the feature network's width with torch-pruning")
    p.add_argument("model", metavar="MODEL", help="built-in model name, spec file or checkpoint")
    p.add_argument("--ratio", type=bounded(float, 0, 1, lo_open=True, hi_open=True), required=True)
    p.add_argument("--image-size", type=bounded(int, 1, 8192), default=None, help="size used to trace and count (default min(spec, 256))")
    p.add_argument("-o", "--output", default=None, help="write the pruned checkpoint here")
    p.set_defaults(handler=cmd_prune)


def _load(ref: str):
    from ..model import create_model, load_model

    if Path(ref).suffix in (".pt", ".pth", ".ckpt") and Path(ref).exists():
        return load_model(ref)
    return create_model(ref)


def cmd_models(args: argparse.Namespace) -> int:
    from ..model import builtin_models, load_model_spec
    from ..profile import FLOPS_NOTE, profile_model

    rows = []
    for name in builtin_models():
        spec = load_model_spec(name)[0]
        p = profile_model(name)  # built on the meta device: no weights, no compute
        rows.append({"model": name, "graph": spec.graph, "backbone": spec.backbone.name, "image_size": p.image_size,
                     "params": p.params, "flops": p.flops})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<18} {'graph':<10} {'backbone':<20} {'size':>5} {'params':>13} {'FLOPs':>18}")
    for r in rows:
        print(f"{r['model']:<18} {r['graph']:<10} {r['backbone']:<20} {r['image_size']:>5} {r['params']:>13,} "
              f"{r['flops']:>18,}")
    print(f"({FLOPS_NOTE}; at each spec's own image size)")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from ..scale import family, scale

    rows = [scale(p) for p in args.phi] if args.phi else family()
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return 0
    print(f"{'model':<17} {'input':>5}  {'backbone':<16} {'W':>4} {'D_bifpn':>7} {'D_head':>6}  {'fusion':<16} anchor  levels")
    for r in rows:
        print(f"{r.name:<17} {r.image_size:>5}  {r.backbone:<16} {r.fpn_channels:>4} {r.fpn_repeat:>7} "
              f"{r.head_repeat:>6}  {r.fusion:<16} {r.anchor_scale:>6}  P{r.levels[0]}-P{r.levels[1]}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from ..profile import FLOPS_NOTE, family_rows, fvcore_flops, profile_model

    if args.family:
        rows = family_rows()
        if args.json:
            print(json.dumps({"flops_convention": FLOPS_NOTE, "rows": rows}, indent=2))
            return 0
        print(f"EfficientDet family at their own input sizes; {FLOPS_NOTE}.")
        print(f"{'model':<17} {'size':>4} {'params':>12} {'+TF biases':>12} {'official':>12} {'Δ':>7} {'Δ+bias':>7}"
              f" {'FLOPs':>17} {'official':>17} {'Δ':>7}")
        for r in rows:
            approx = "" if r["official_exact"] else "~"
            print(f"{r['model']:<17} {r['image_size']:>4} {r['params']:>12,} {r['params_with_tf_biases']:>12,} "
                  f"{approx}{r['official_params']:>11,} {r['params_diff_pct']:>+6.2f}% {r['params_with_tf_biases_diff_pct']:>+6.2f}%"
                  f" {r['flops']:>17,} {approx}{r['official_flops']:>16,} {r['flops_diff_pct']:>+6.2f}%")
        print("Δ params: we drop the conv bias the TF code keeps before every BN; adding those biases back "
              "('+TF biases') gives the official counts exactly (D7x's official figures are rounded).")
        print("Δ FLOPs: counting conventions for what is not a convolution: fvcore counts batch norm at 2 "
              "per element and nearest upsampling at 1 per output element; TF's profiler has rules of its "
              "own, which we have not reconstructed.")
        return 0
    if not args.model:
        raise EdgError("profile needs a MODEL or --family efficientdet")
    is_ckpt = Path(args.model).suffix in (".pt", ".pth", ".ckpt")
    # by name the profile is counted from the spec without building the model; a
    # checkpoint (maybe pruned) is counted by running it, fvcore needs real weights
    model = _load(args.model).eval() if (is_ckpt or args.fvcore or args.latency) else None
    p = profile_model(model if is_ckpt else args.model, args.image_size)
    data = p.as_dict()
    if args.fvcore:
        import torch

        total, _ = fvcore_flops(model, (torch.zeros(1, 3, p.image_size, p.image_size),))
        data["fvcore_flops"] = total
    if args.latency:
        from ..profile import measure_latency

        if args.reps < 1 or args.warmup < 0 or min(args.batch) < 1:
            raise EdgError("--latency needs --reps >= 1, --warmup >= 0 and batch sizes >= 1")
        data["latency"] = measure_latency(model, p.image_size, args.batch, args.reps, args.warmup,
                                          not args.no_compile, args.backend, args.device)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{p.name} at {p.image_size}x{p.image_size}: {p.params:,} parameters, {p.flops:,} FLOPs")
    print(f"({FLOPS_NOTE})")
    if args.fvcore:
        print(f"fvcore: {data['fvcore_flops']:,} FLOPs ({100 * (p.flops - data['fvcore_flops']) / data['fvcore_flops']:+.3f}%)")
    if args.latency:
        print(f"\n{'mode':<22} {'device':<8} {'batch':>5} {'latency ms':>11} {'images/s':>10} {'first call ms':>14}")
        for r in data["latency"]:
            first = f"{r['first_call_ms']:>14,.0f}" if "first_call_ms" in r else f"{'':>14}"
            print(f"{r['mode']:<22} {r['device']:<8} {r['batch']:>5} {r['latency_ms']:>11.2f} {r['images_per_s']:>10.1f} {first}")
        print(f"(medians of {args.reps} runs after {args.warmup} warm-up runs; first call = compilation)")
    print(f"\n{'component':<12} {'params':>12} {'FLOPs':>17}")
    for name, c in p.components.items():
        print(f"{name:<12} {c['params']:>12,} {c['flops']:>17,}")
    print(f"\n{'graph node':<20} {'params':>10} {'FLOPs':>15}")
    for name, c in p.nodes.items():
        print(f"{name:<20} {c['params']:>10,} {c['flops']:>15,}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..model import load_effdet_checkpoint, model_for_effdet, save_model

    sd = load_effdet_checkpoint(args.checkpoint)
    model = model_for_effdet(sd, model=args.model, effdet_config=args.effdet_config, tf=args.tf,
                             padding=args.padding, num_classes=args.num_classes)
    save_model(model, args.output)
    s = model.spec
    print(f"converted {len(sd)} tensors into {s.name} (backbone {s.backbone.name}, padding {s.padding}, "
          f"fusion {s.fusion}, {s.num_classes} classes); wrote {args.output}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from ..model import save_model
    from ..prune import prune_model

    model = _load(args.model)
    pruned, r = prune_model(model, args.ratio, args.image_size)
    print(f"pruned {model.spec.name} by {args.ratio:.0%}: feature network width {r.channels_before} -> {r.channels_after}")
    print(f"  feature network params {r.fpn_params_before:,} -> {r.fpn_params_after:,}")
    print(f"  model params           {r.params_before:,} -> {r.params_after:,} "
          f"({100 * (r.params_after - r.params_before) / r.params_before:+.1f}%)")
    print(f"  FLOPs at {r.image_size}px        {r.flops_before:,} -> {r.flops_after:,} "
          f"({100 * (r.flops_after - r.flops_before) / r.flops_before:+.1f}%)")
    if args.output:
        save_model(pruned, args.output)
        print(f"wrote {args.output}")
    return 0
