"""Export a compiled feature network: ``torch.export`` with dynamic height and width,
and ONNX (checked against onnxruntime when it is installed)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.fx as fx

from .shapes import level_size

__all__ = ["example_inputs", "dynamic_shapes", "export_program", "export_onnx", "check_onnx"]


def _meta(gm: fx.GraphModule) -> dict:
    try:
        return gm.meta["edg"]
    except (AttributeError, KeyError):
        raise TypeError("expected a module made by compile_graph") from None


def example_inputs(gm: fx.GraphModule, input_size: int | tuple[int, int], batch: int = 1,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Random feature maps of the right channels and sizes for an image of ``input_size``."""
    meta = _meta(gm)
    gen = torch.Generator().manual_seed(0)
    return tuple(
        torch.randn(batch, meta["in_channels"][k], *level_size(input_size, k), generator=gen).to(device, dtype)
        for k in _inputs(meta)
    )


def _inputs(meta: dict) -> tuple[int, ...]:
    lo, hi = meta["levels"]
    return tuple(meta.get("inputs", range(lo, hi + 1)))


def _outputs(meta: dict) -> tuple[int, ...]:
    lo, hi = meta["levels"]
    return tuple(meta.get("outputs", range(lo, hi + 1)))


def dynamic_shapes(gm: fx.GraphModule) -> tuple[dict, ...]:
    """Height and width free, tied across levels: level k is 2**(hi-k) times the top level,
    so the image size must be a multiple of 2**hi (the top level's size is the free one,
    whether or not that level has an input)."""
    meta = _meta(gm)
    hi = meta["levels"][1]
    # A size of 1 is special-cased by the tracer, so the top level starts at 2.
    h = torch.export.Dim("h_top", min=2, max=4096)
    w = torch.export.Dim("w_top", min=2, max=4096)
    return tuple({2: h * 2 ** (hi - k) if k < hi else h, 3: w * 2 ** (hi - k) if k < hi else w} for k in _inputs(meta))


def _tracing_size(gm: fx.GraphModule, input_size: int | tuple[int, int]) -> tuple[int, int]:
    """An example image size whose top level is at least 2 and divides evenly."""
    hi = _meta(gm)["levels"][1]
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    step = 2**hi
    return max(2 * step, -(-h // step) * step), max(2 * step, -(-w // step) * step)


def export_program(gm: fx.GraphModule, input_size: int | tuple[int, int] = 256) -> torch.export.ExportedProgram:
    """``torch.export`` with free height and width (image sizes that are multiples of 2**max_level)."""
    args = example_inputs(gm, _tracing_size(gm, input_size))
    return torch.export.export(gm, args, dynamic_shapes=dynamic_shapes(gm))


def export_onnx(gm: fx.GraphModule, path: str | os.PathLike, input_size: int | tuple[int, int] = 256) -> Path:
    """Write ONNX (opset 18) with dynamic batch-free height/width; needs onnx + onnxscript."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = _meta(gm)
    gm = gm.eval()
    args = example_inputs(gm, _tracing_size(gm, input_size))
    tmp = path.with_name(f".{path.name}.tmp")
    torch.onnx.export(
        gm, args, str(tmp), dynamo=True, dynamic_shapes=dynamic_shapes(gm),
        input_names=[f"P{k}_in" for k in _inputs(meta)], output_names=[f"P{k}_out" for k in _outputs(meta)],
        external_data=False, verbose=False,
    )
    os.replace(tmp, path)
    return path


def check_onnx(gm: fx.GraphModule, path: str | os.PathLike, input_size: int | tuple[int, int]) -> float:
    """Largest absolute difference between onnxruntime and PyTorch on the same inputs."""
    import onnxruntime as ort

    gm = gm.eval()
    args = example_inputs(gm, input_size)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    with torch.no_grad():
        want = gm(*args)
    return max(float((torch.from_numpy(g) - w).abs().max()) for g, w in zip(got, want))
