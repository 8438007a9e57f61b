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

    p = sub.add_parser("export", help="export a compiled graph (ONNX)")
    _common(p)
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="write ONNX here")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(handler=cmd_export)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", metavar="NAME_OR_PATH")
    p.add_argument("--channels", type=bounded(int, 1, 8192), default=64, help="width of every node (default 64)")
    p.add_argument("--in-channels", default=None, metavar="C[,C...]",
                   help="channels of the inputs, one number or one per level from the lowest "
                        "(e.g. 40,112,320 for EfficientNet-B0 P3-P5; missing levels get --channels)")
    p.add_argument("--input-size", type=bounded(int, 1, 8192), default=None, metavar="PIXELS",
                   help="image size; prints the output shapes (inferred, no tensors run)")
    p.add_argument("--padding", choices=("same", "symmetric"), default="same",
                   help="pool/stride padding: TF 'same' (official) or PyTorch 'symmetric' (effdet)")


class _BadArgs(EdgError):
    pass


def _in_channels(text: str | None, lo: int) -> int | dict[int, int] | None:
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _BadArgs(f"--in-channels {text!r}: expected integers separated by commas") from None
    if len(values) == 1:
        return values[0]
    return {lo + i: c for i, c in enumerate(values)}


def _build(args: argparse.Namespace):
    from ..compile import compile_graph
    from ..ops import CompileOptions
    from ..passes import load_graph

    g = load_graph(args.graph)
    lo, _ = g.graph["levels"]
    cin = _in_channels(args.in_channels, lo)
    t0 = time.perf_counter()
    gm = compile_graph(g, args.channels, cin, CompileOptions(padding=args.padding))
    return g, gm, time.perf_counter() - t0


def cmd_compile(args: argparse.Namespace) -> int:
    from ..compile import infer_shapes, output_shapes

    g, gm, seconds = _build(args)
    n_params = sum(p.numel() for p in gm.parameters())
    print(f"compiled {g.graph['name']} at {args.channels} channels in {seconds * 1000:.1f} ms: "
          f"{n_params:,} parameters, {len(list(gm.graph.nodes))} fx nodes", file=sys.stderr)
    if args.print_code:
        print(gm.code.strip("\n"))
    if args.input_size:
        meta = gm.meta["edg"]
        inputs = infer_shapes(g, args.channels, args.input_size, meta["in_channels"])
        lo, hi = meta["levels"]
        print(f"inputs for a {args.input_size}x{args.input_size} image (C, H, W):")
        for k in range(lo, hi + 1):
            print(f"  P{k}_in: {inputs[f'P{k}_in']}")
        print("outputs (C, H, W):")
        for k, shape in output_shapes(g, args.channels, args.input_size, meta["in_channels"]).items():
            print(f"  P{k}: {shape}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..compile.export import check_onnx, export_onnx

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
