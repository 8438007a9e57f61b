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
    p.add_argument("--fvcore", action="store_true", help="also count with fvcore (runs the model for real)")
    p.set_defaults(handler=cmd_profile)

    p = sub.add_parser("convert", help="load an effdet checkpoint into our model and save it")
    p.add_argument("checkpoint", help="effdet (efficientdet-pytorch) state dict or training checkpoint")
    p.add_argument("--model", required=True, help="our model: built-in name (efficientdet-d0) or spec file")
    p.add_argument("--tf", action="store_true",
                   help="a tf_efficientdet_* checkpoint: tf_efficientnet backbone, TF 'same' padding")
    p.add_argument("--num-classes", type=bounded(int, 1, 10_000), default=None)
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
    # by name the profile builds on the meta device; fvcore needs real weights
    model = _load(args.model).eval() if (is_ckpt or args.fvcore) else None
    p = profile_model(model if model is not None else args.model, args.image_size)
    data = p.as_dict()
    if args.fvcore:
        import torch

        total, _ = fvcore_flops(model, (torch.zeros(1, 3, p.image_size, p.image_size),))
        data["fvcore_flops"] = total
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{p.name} at {p.image_size}x{p.image_size}: {p.params:,} parameters, {p.flops:,} FLOPs")
    print(f"({FLOPS_NOTE})")
    if args.fvcore:
        print(f"fvcore: {data['fvcore_flops']:,} FLOPs ({100 * (p.flops - data['fvcore_flops']) / data['fvcore_flops']:+.3f}%)")
    print(f"\n{'component':<12} {'params':>12} {'FLOPs':>17}")
    for name, c in p.components.items():
        print(f"{name:<12} {c['params']:>12,} {c['flops']:>17,}")
    print(f"\n{'graph node':<20} {'params':>10} {'FLOPs':>15}")
    for name, c in p.nodes.items():
        print(f"{name:<20} {c['params']:>10,} {c['flops']:>15,}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..model import convert_effdet, create_model, load_effdet_checkpoint, save_model

    sd = load_effdet_checkpoint(args.checkpoint)
    overrides = {}
    if args.num_classes:
        overrides["num_classes"] = args.num_classes
    model = create_model(args.model, **overrides)
    if args.tf:
        from ..model import build_model

        bb = model.spec.backbone.model_copy(update={"name": "tf_" + model.spec.backbone.name.removeprefix("tf_")})
        model = build_model(model.spec.model_copy(update={"backbone": bb, "padding": "same"}), graph=model.graph)
    convert_effdet(model, sd)
    save_model(model, args.output)
    print(f"converted {len(sd)} tensors into {model.spec.name}; wrote {args.output}")
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
