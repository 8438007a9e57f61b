"""Whole-detector export: image in, decoded boxes and class scores out.

The exported graph runs backbone, feature network, heads and box decoding, for a fixed
image size (the anchors are constants) and any batch. Non-maximum suppression is left to
the runtime, as most deployment stacks do it themselves (TensorRT's EfficientNMS,
onnxruntime-extensions, a few lines of numpy): ``select_detections`` is the reference,
the same code ``EfficientDet.detect`` ends with.

Outputs: ``boxes`` (B, N, 4) as (x1, y1, x2, y2) in input pixels, clipped to the image;
``scores`` (B, N, C) per class after the sigmoid; N = anchors of the image size.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .anchors import decode_outputs
from .build import EfficientDet

__all__ = ["DecodedDetector", "export_detector_onnx", "export_detector_program", "export_onnx", "run_onnx_detector",
           "check_onnx_detector"]


class DecodedDetector(nn.Module):
    """``EfficientDet`` up to and including box decoding, for an image of ``image_size``."""

    def __init__(self, model: EfficientDet, image_size: int | tuple[int, int] | None = None):
        super().__init__()
        size = image_size or model.spec.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.model = model
        sizes = model.feature_sizes(self.image_size)
        self.register_buffer("anchor_boxes", model.anchors.boxes(sizes), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, box = self.model(images)
        return decode_outputs(cls, box, self.anchor_boxes, self.image_size)


def _example(model: DecodedDetector, batch: int = 2) -> tuple[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 3, *model.image_size, generator=gen),)


def _dynamic() -> tuple[dict]:
    return ({0: torch.export.Dim("batch", min=1, max=1024)},)


def export_detector_program(model: EfficientDet, image_size: int | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` of the whole detector (up to decoding) with a free batch size."""
    wrapped = DecodedDetector(model.eval(), image_size).eval()
    return torch.export.export(wrapped, _example(wrapped), dynamic_shapes=_dynamic())


def export_detector_onnx(model: EfficientDet, path: str | os.PathLike, image_size: int | None = None) -> Path:
    """ONNX (opset 18): input ``images`` (B, 3, H, W) normalised as in training, outputs
    ``boxes`` and ``scores``; the batch is dynamic. Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = DecodedDetector(model.eval(), image_size).eval()
    tmp = path.with_name(f".{path.name}.tmp")
    torch.onnx.export(wrapped, _example(wrapped), str(tmp), dynamo=True, dynamic_shapes=_dynamic(),
                      input_names=["images"], output_names=["boxes", "scores"], external_data=False, verbose=False)
    os.replace(tmp, path)
    return path


def run_onnx_detector(path: str | os.PathLike, images: torch.Tensor, score_threshold: float = 0.05,
                      iou_threshold: float = 0.5, max_detections: int = 100) -> list[dict[str, torch.Tensor]]:
    """Run an exported detector in onnxruntime and finish with the same NMS as ``detect``."""
    import onnxruntime as ort

    from .anchors import select_detections

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(None, {"images": images.numpy()})
    return select_detections(torch.from_numpy(boxes), torch.from_numpy(scores), score_threshold, iou_threshold,
                             max_detections)


def export_onnx(module: torch.nn.Module, path: str | os.PathLike, image_size: int | None = None) -> Path:
    """ONNX of a whole detector (``EfficientDet``: images in, boxes and scores out) or of a
    compiled feature network (``compile_graph``: feature maps in and out, ``image_size``
    defaulting to 256 for tracing)."""
    if isinstance(module, EfficientDet):
        return export_detector_onnx(module, path, image_size)
    from ..compile.export import export_onnx as export_feature_network

    return export_feature_network(module, path, image_size or 256)


def check_onnx_detector(model: EfficientDet, path: str | os.PathLike, images: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime and PyTorch on the decoded boxes and
    scores (before NMS, where near-equal scores could only reorder ties)."""
    import onnxruntime as ort

    wrapped = DecodedDetector(model.eval(), tuple(images.shape[-2:])).eval()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": images.numpy()})
    with torch.no_grad():
        want = wrapped(images)
    return max(float((torch.from_numpy(g) - w).abs().max()) for g, w in zip(got, want))
