"""Anchor matching and the detection loss (EfficientDet / RetinaNet).

An anchor is positive when its best IoU with a ground-truth box is >= 0.5, negative
below 0.4, ignored in between; every box also claims its best anchor (TF's argmax
matcher with forced matches). Focal loss (alpha 0.25, gamma 1.5) on all but ignored
anchors, Huber loss (delta 0.1) on the box codes of positives, weighted 50; both
normalised by the number of positives (over all processes when distributed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, sigmoid_focal_loss

from ..model.anchors import Anchors, encode_boxes

__all__ = ["LossConfig", "match_anchors", "DetectionLoss"]


@dataclass(frozen=True)
class LossConfig:
    alpha: float = 0.25
    gamma: float = 1.5
    huber_delta: float = 0.1
    box_weight: float = 50.0
    positive_iou: float = 0.5
    negative_iou: float = 0.4


def match_anchors(anchors: torch.Tensor, boxes: torch.Tensor, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """For each anchor: the index of its box (or -1 negative, -2 ignored)."""
    n = anchors.shape[0]
    if boxes.numel() == 0:
        return torch.full((n,), -1, dtype=torch.long, device=anchors.device), torch.zeros(n, device=anchors.device)
    iou = box_iou(anchors, boxes)  # (A, N)
    best, idx = iou.max(dim=1)
    match = idx.clone()
    match[best < cfg.positive_iou] = -2
    match[best < cfg.negative_iou] = -1
    forced = iou.argmax(dim=0)  # each box's best anchor
    match[forced] = torch.arange(boxes.shape[0], device=anchors.device)
    return match, best


class DetectionLoss:
    def __init__(self, anchors: Anchors, num_classes: int, cfg: LossConfig | None = None):
        self.anchors, self.num_classes, self.cfg = anchors, num_classes, cfg or LossConfig()

    def sums(self, cls_outputs: list[torch.Tensor], box_outputs: list[torch.Tensor],
             targets: list[dict], image_size: tuple[int, int] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed class loss, summed box loss (/4 per box), and the number of positives.
        ``image_size`` (h, w) places the anchors as ``detect`` does (see ``Anchors.boxes``)."""
        b = cls_outputs[0].shape[0]
        c = self.num_classes
        cls = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, c) for x in cls_outputs], 1).float()
        box = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, 4) for x in box_outputs], 1).float()
        anchors = self.anchors.boxes([tuple(x.shape[-2:]) for x in cls_outputs], cls.device, image_size)
        cls_sum = cls.new_zeros(())
        box_sum = cls.new_zeros(())
        positives = cls.new_zeros(())
        for i, t in enumerate(targets):
            gt_boxes = t["boxes"].to(cls.device)
            gt_labels = t["labels"].to(cls.device)
            match, _ = match_anchors(anchors, gt_boxes, self.cfg)
            pos = match >= 0
            valid = match != -2
            one_hot = torch.zeros_like(cls[i])
            if pos.any():
                one_hot[pos, gt_labels[match[pos]]] = 1.0
            focal = sigmoid_focal_loss(cls[i], one_hot, alpha=self.cfg.alpha, gamma=self.cfg.gamma, reduction="none")
            cls_sum = cls_sum + focal[valid].sum()
            if pos.any():
                codes = encode_boxes(gt_boxes[match[pos]], anchors[pos])
                huber = F.huber_loss(box[i][pos], codes, delta=self.cfg.huber_delta, reduction="sum")
                box_sum = box_sum + huber / 4.0
            positives = positives + pos.sum()
        return cls_sum, box_sum, positives

    def __call__(self, cls_outputs, box_outputs, targets, positives_total: torch.Tensor | None = None,
                 world_size: int = 1, image_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Losses normalised by the positives of the whole (global) batch; with
        ``world_size`` processes each one's loss is scaled so that DDP's gradient
        average equals the single-process gradient of the global batch."""
        cls_sum, box_sum, pos = self.sums(cls_outputs, box_outputs, targets, image_size)
        total_pos = (positives_total if positives_total is not None else pos).clamp(min=1.0)
        scale = world_size / total_pos
        cls_loss, box_loss = cls_sum * scale, box_sum * scale
        return {"loss": cls_loss + self.cfg.box_weight * box_loss, "cls": cls_loss, "box": box_loss, "positives": pos}
