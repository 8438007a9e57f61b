"""Sub-commands that build modules: compile, export."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import EdgError

from ._args import bounded

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a graph into a PyTorch module; print its code and shapes")
    _common(p)
    p.add_argument("--print-code", action="store_true", help="print the generated forward()")
    p.set_defaults(handler=cmd_compile)

    p = sub.add_parser("export", help="export a compiled graph, or a whole detector (ONNX)",
                       description="A graph (NAME_OR_PATH) exports its feature network (feature maps in and out). "
                       "A model (built-in model spec name, model spec file, or checkpoint .pt) exports the whole "
                       "detector: images (B, 3, S, S) in, decoded boxes (B, N, 4) and per-class scores (B, N, C) "
                       "out, dynamic batch, the spec's image size; NMS is left to the runtime.")
    _common(p)
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="write ONNX here")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(handler=cmd_export)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", metavar="NAME_OR_PATH")
    p.add_argument("--channels", type=bounded(int, 1, 8192), default=None, help="width of every node (default 64)")
    p.add_argument("--in-channels", default=None, metavar="C[,C...]",
                   help="channels of the inputs, one number or one per input level from the lowest "
                        "(e.g. 40,112,320 for EfficientNet-B0 P3-P5; missing levels get --channels)")
    p.add_argument("--input-size", type=bounded(int, 1, 8192), default=None, metavar="PIXELS",
                   help="image size; prints the output shapes (inferred, no tensors run)")
    p.add_argument("--padding", choices=("same", "symmetric"), default="same",
                   help="pool/stride padding: TF 'same' (official) or PyTorch 'symmetric' (effdet)")


class _BadArgs(EdgError):
    pass


def _in_channels(text: str | None, levels: tuple[int, ...]) -> int | dict[int, int] | None:
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _BadArgs(f"--in-channels {text!r}: expected integers separated by commas") from None
    if len(values) == 1:
        return values[0]
    if len(values) > len(levels):
        raise _BadArgs(f"--in-channels {text!r}: {len(values)} values, but the graph has "
                       f"{len(levels)} inputs ({', '.join(f'P{k}' for k in levels)}); the rest would be for levels "
                       "outside them")
    return {k: c for k, c in zip(levels, values)}


def _build(args: argparse.Namespace):
    from ..compile import compile_graph
    from ..graph import input_levels
    from ..ops import CompileOptions
    from ..passes import load_graph

    g = load_graph(args.graph)
    cin = _in_channels(args.in_channels, input_levels(g))
    t0 = time.perf_counter()
    gm = compile_graph(g, args.channels, cin, CompileOptions(padding=args.padding))
    return g, gm, time.perf_counter() - t0


def cmd_compile(args: argparse.Namespace) -> int:
    from ..compile import infer_shapes, output_shapes

    if args.channels is None:
        args.channels = 64
    g, gm, seconds = _build(args)
    n_params = sum(p.numel() for p in gm.parameters())
    print(f"compiled {g.graph['name']} at {args.channels} channels in {seconds * 1000:.1f} ms: "
          f"{n_params:,} parameters, {len(list(gm.graph.nodes))} fx nodes", file=sys.stderr)
    if args.print_code:
        print(gm.code.strip("\n"))
    if args.input_size:
        meta = gm.meta["edg"]
        inputs = infer_shapes(g, args.channels, args.input_size, meta["in_channels"])
        print(f"inputs for a {args.input_size}x{args.input_size} image (C, H, W):")
        for k in meta["inputs"]:
            print(f"  P{k}_in: {inputs[f'P{k}_in']}")
        print("outputs (C, H, W):")
        for k, shape in output_shapes(g, args.channels, args.input_size, meta["in_channels"]).items():
            print(f"  P{k}: {shape}")
    return 0


def _is_model(ref: str) -> bool:
    """A checkpoint, a built-in model spec, or a YAML file with the keys of a model spec."""
    from pathlib import Path

    from ..spec.builtin import builtin_names

    if Path(ref).suffix in (".pt", ".pth", ".ckpt") or ref in builtin_names("specs"):
        return True
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        from ..spec import parse_yaml

        try:
            data = parse_yaml(path.read_text(), str(path))[0]
        except Exception:  # not ours to judge here: the graph loader reports it with its position
            return False
        return isinstance(data, dict) and "backbone" in data and "nodes" not in data
    return False


def cmd_export_detector(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..model import create_model, load_model
    from ..model.export import check_onnx_detector, export_detector_onnx

    model = load_model(args.graph) if Path(args.graph).suffix in (".pt", ".pth", ".ckpt") else create_model(args.graph)
    model.eval()
    size = args.input_size or model.spec.image_size
    try:
        path = export_detector_onnx(model, args.onnx, size)
    except ImportError as e:
        raise _BadArgs(f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing)") from None
    print(f"wrote {path}: images (B, 3, {size}, {size}) -> boxes (B, N, 4), scores (B, N, "
          f"{model.spec.num_classes}); NMS left to the runtime")
    if not args.no_check:
        images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        try:
            diff = check_onnx_detector(model, path, images)
        except ImportError:
            print("onnxruntime is not installed: not checked", file=sys.stderr)
            return 0
        print(f"onnxruntime vs PyTorch at {size}px, boxes and scores: max abs difference {diff:.2e}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..compile.export import check_onnx, export_onnx

    if args.channels is None and _is_model(args.graph):
        return cmd_export_detector(args)
    if args.channels is None:
        args.channels = 64
    _, gm, _ = _build(args)
    size = args.input_size or 256
    try:
        path = export_onnx(gm, args.onnx, size)
    except ImportError as e:
        raise _BadArgs(f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing)") from None
    print(f"wrote {path}")
    if not args.no_check:
        try:
            diff = check_onnx(gm, path, size)
        except ImportError:
            print("onnxruntime is not installed: not checked", file=sys.stderr)
            return 0
        print(f"onnxruntime vs PyTorch at {size}px: max abs difference {diff:.2e}")
    return 0
