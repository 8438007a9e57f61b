"""Anchors (num_scales x aspect ratios per position), box coding, and NMS."""

from __future__ import annotations

import torch

__all__ = ["Anchors", "decode_boxes", "decode_outputs", "encode_boxes", "flatten_outputs", "postprocess",
           "select_detections"]


class Anchors:
    """Anchor boxes (x1, y1, x2, y2) in the order the heads' outputs flatten to:
    level, then position (row-major), then scale, then aspect ratio."""

    def __init__(self, levels: list[int], scale: float, num_scales: int, aspect_ratios):
        self.levels = list(levels)
        self.scale, self.num_scales = scale, num_scales
        self.aspect_ratios = [tuple(a) for a in aspect_ratios]
        self._cache: dict = {}

    @property
    def per_position(self) -> int:
        return self.num_scales * len(self.aspect_ratios)

    def boxes(self, sizes: list[tuple[int, int]], device=None, image_size: tuple[int, int] | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All anchors for feature maps of ``sizes`` (one (h, w) per level) of an image of
        ``image_size`` (h, w).

        The stride of a level is image size / feature size on each axis, as the official
        code and effdet place anchors: 2^level only when the image size is divisible by
        2^level (a 385x513 image's P7 is 4x5, strides 96.25 and 102.6, not 128). Without
        ``image_size`` the image is taken as the lowest level's size times 2^level."""
        if image_size is None:
            lo, (h0, w0) = self.levels[0], sizes[0]
            image_size = (h0 * 2**lo, w0 * 2**lo)
        ih, iw = image_size
        key = (tuple(sizes), (ih, iw), str(device), dtype)
        if key not in self._cache:
            per_level = []
            for (h, w) in sizes:
                sy, sx = ih / h, iw / w
                ys = (torch.arange(h, dtype=torch.float64) + 0.5) * sy
                xs = (torch.arange(w, dtype=torch.float64) + 0.5) * sx
                cy, cx = torch.meshgrid(ys, xs, indexing="ij")
                cy, cx = cy.reshape(-1, 1), cx.reshape(-1, 1)
                half = []
                for octave in range(self.num_scales):
                    octave_scale = self.scale * 2.0 ** (octave / self.num_scales)
                    for ax, ay in self.aspect_ratios:
                        half.append((octave_scale * sx * ax / 2.0, octave_scale * sy * ay / 2.0))
                hw = torch.tensor(half, dtype=torch.float64)  # (A, 2)
                boxes = torch.stack(
                    [cx - hw[:, 0], cy - hw[:, 1], cx + hw[:, 0], cy + hw[:, 1]], dim=-1
                )  # (H*W, A, 4)
                per_level.append(boxes.reshape(-1, 4))
            self._cache[key] = torch.cat(per_level).to(device=device, dtype=dtype)
        return self._cache[key]


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) targets → (ty, tx, th, tw) relative to anchors (TF EfficientDet's order)."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    w, h = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3), (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    x, y = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    return torch.stack([(y - ay) / ah, (x - ax) / aw, torch.log(h / ah), torch.log(w / aw)], dim=-1)


def decode_boxes(codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of ``encode_boxes``; codes (..., N, 4) → boxes (..., N, 4) as (x1, y1, x2, y2)."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    ty, tx, th, tw = codes.unbind(-1)
    w, h = torch.exp(tw.clamp(max=8.0)) * aw, torch.exp(th.clamp(max=8.0)) * ah
    x, y = tx * aw + ax, ty * ah + ay
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], dim=-1)


def flatten_outputs(cls_outputs: list[torch.Tensor], box_outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level head maps → class logits (B, N, C) and box codes (B, N, 4), in anchor order."""
    b = cls_outputs[0].shape[0]
    num_classes = cls_outputs[0].shape[1] // (box_outputs[0].shape[1] // 4)
    cls = torch.cat([c.permute(0, 2, 3, 1).reshape(b, -1, num_classes) for c in cls_outputs], 1)
    box = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, 4) for x in box_outputs], 1)
    return cls, box


def decode_outputs(cls_outputs: list[torch.Tensor], box_outputs: list[torch.Tensor], anchors: Anchors | torch.Tensor,
                   image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every anchor decoded: boxes (B, N, 4) as (x1, y1, x2, y2) clipped to the image, and
    class scores (B, N, C) after the sigmoid. What an exported detector returns; NMS
    (``select_detections``) is the rest of ``postprocess``. ``anchors`` may be the
    anchor boxes themselves (an exported graph holds them as a constant)."""
    cls, box = flatten_outputs(cls_outputs, box_outputs)
    dtype = cls.dtype if cls.dtype == torch.float64 else torch.float32
    anc = anchors if isinstance(anchors, torch.Tensor) else anchors.boxes(
        [tuple(c.shape[-2:]) for c in cls_outputs], cls.device, tuple(image_size), dtype)
    boxes = decode_boxes(box.to(dtype), anc.to(dtype))
    h, w = image_size
    boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                         boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], dim=-1)
    return boxes, cls.to(dtype).sigmoid()


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, score_threshold: float = 0.05,
                      iou_threshold: float = 0.5, max_detections: int = 100,
                      pre_nms_top_k: int = 1000) -> list[dict[str, torch.Tensor]]:
    """Per image: the top-scoring (anchor, class) pairs above the threshold, NMS per class.
    Takes ``decode_outputs``' tensors (torch, or numpy arrays from an exported model)."""
    from torchvision.ops import batched_nms  # here, not at the top: torchvision takes seconds to import

    boxes, scores = torch.as_tensor(boxes), torch.as_tensor(scores)
    num_classes = scores.shape[-1]
    results = []
    for i in range(scores.shape[0]):
        flat = scores[i].flatten()
        top, idx = flat.topk(min(pre_nms_top_k, flat.numel()))
        keep = top > score_threshold
        top, idx = top[keep], idx[keep]
        a, labels = idx // num_classes, idx % num_classes
        b = boxes[i, a]
        kept = batched_nms(b, top, labels, iou_threshold)[:max_detections]
        results.append({"boxes": b[kept], "scores": top[kept], "labels": labels[kept]})
    return results


def postprocess(
    cls_outputs: list[torch.Tensor], box_outputs: list[torch.Tensor], anchors: Anchors,
    image_size: tuple[int, int], score_threshold: float = 0.05, iou_threshold: float = 0.5,
    max_detections: int = 100, pre_nms_top_k: int = 1000,
) -> list[dict[str, torch.Tensor]]:
    """Per image: the top-scoring (anchor, class) pairs, decoded, clipped, NMS per class."""
    boxes, scores = decode_outputs(cls_outputs, box_outputs, anchors, image_size)
    return select_detections(boxes, scores, score_threshold, iou_threshold, max_detections, pre_nms_top_k)
