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
from torchvision.ops import box_iou

from ..model.anchors import Anchors, encode_boxes

__all__ = ["Assignment", "LossConfig", "match_anchors", "match_anchors_batch", "focal_loss_sum", "DetectionLoss"]


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


def _pad(boxes: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 4) boxes padded with zeros to the largest count, and the (B, N) mask of real ones."""
    n = max((len(b) for b in boxes), default=0)
    padded = torch.zeros(len(boxes), n, 4, device=device)
    valid = torch.zeros(len(boxes), n, dtype=torch.bool, device=device)
    for i, b in enumerate(boxes):
        padded[i, :len(b)] = b.to(device=device, dtype=padded.dtype)
        valid[i, :len(b)] = True
    return padded, valid


def match_anchors_batch(anchors: torch.Tensor, boxes: list[torch.Tensor], cfg: LossConfig) -> torch.Tensor:
    """``match_anchors`` for a batch at once: (B, A) box indices (-1 negative, -2 ignored).
    One IoU tensor over the padded boxes replaces a Python loop over the images."""
    b, a = len(boxes), anchors.shape[0]
    padded, valid = _pad(boxes, anchors.device)
    if padded.shape[1] == 0:
        return torch.full((b, a), -1, dtype=torch.long, device=anchors.device)
    iou = _box_iou_batched(anchors, padded)  # (B, A, N)
    iou.masked_fill_(~valid[:, None, :], -1.0)  # padding never matches, not even as a negative's argmax
    best, match = iou.max(dim=2)
    match[best < cfg.positive_iou] = -2
    match[best < cfg.negative_iou] = -1
    forced = iou.argmax(dim=1)  # (B, N): each box's best anchor
    img, box = valid.nonzero(as_tuple=True)
    match[img, forced[img, box]] = box
    return match


def _box_iou_batched(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of (A, 4) anchors with (B, N, 4) boxes: (B, A, N), as ``torchvision.ops.box_iou``."""
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    area_b = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    lt = torch.maximum(anchors[None, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(anchors[None, :, None, 2:], boxes[:, None, :, 2:])
    wh = (rb - lt).clamp_(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[None, :, None] + area_b[:, None, :] - inter)


def focal_loss_sum(logits: torch.Tensor, positives: torch.Tensor, weight: torch.Tensor, alpha: float, gamma: float
                   ) -> torch.Tensor:
    """``(sigmoid_focal_loss(logits, one_hot) * weight).sum()`` where ``one_hot`` is 1 at the
    flat indices ``positives`` of ``logits`` and 0 elsewhere, and ``weight`` broadcasts to
    ``logits`` (0 for ignored anchors, 1 at every positive). The value of torchvision's
    ``sigmoid_focal_loss``, but the gradient is made in the same pass, in place, in a few
    buffers: the (batch, anchors, classes) tensors are the largest of a training step, and
    autograd through a dozen element-wise ops allocated (and page-faulted) one per op."""
    return _FocalSum.apply(logits, positives, weight, alpha, gamma)


def _power(m: torch.Tensor, gamma: float) -> torch.Tensor:
    if gamma == 1.5:  # EfficientDet's: sqrt is several times cheaper than pow
        return m.sqrt().mul_(m)
    if gamma == 2.0:
        return m.square()
    return m.pow(gamma)


_TINY = torch.finfo(torch.float32).tiny


class _FocalSum(torch.autograd.Function):
    # With q = p_t (sigmoid(x) for a positive entry, sigmoid(-x) for a negative one) and
    # m = 1 - q: loss = -a * m^g * log(q), a = alpha or 1 - alpha, and
    # d loss / dx = -a * m^g * (m - g * q * log(q)) for a positive, the opposite for a negative.
    @staticmethod
    def forward(ctx, x, positives, weight, alpha: float, gamma: float):
        flat = x.reshape(-1)
        xp = flat[positives]
        m = torch.sigmoid(x)  # = 1 - p_t for the (many) negatives
        q = torch.neg(x).sigmoid_()
        m.view(-1)[positives] = torch.sigmoid(-xp)
        q.view(-1)[positives] = torch.sigmoid(xp)
        log_q = q.clamp_min(_TINY).log_()  # finite for logits up to ~87 from the right answer
        amg = _power(m, gamma).mul_(weight * (1.0 - alpha))
        amg.view(-1)[positives] = _power(m.view(-1)[positives], gamma) * alpha
        total = -torch.dot(amg.reshape(-1), log_q.reshape(-1))
        if ctx.needs_input_grad[0]:
            dx = q.mul_(log_q).mul_(-gamma).add_(m).mul_(amg)  # d loss / dx of a negative
            dx.view(-1)[positives] *= -1.0
            ctx.save_for_backward(dx)
        return total

    @staticmethod
    def backward(ctx, grad):
        (dx,) = ctx.saved_tensors
        return dx * grad, None, None, None, None


@dataclass(frozen=True)
class Assignment:
    """A batch's anchors matched to its boxes, made once per step: the loss and the count of
    positives (all-reduced across processes before the loss) both come from it."""

    labels: torch.Tensor  # (B, A) class of each anchor; -1 negative, -2 ignored
    codes: torch.Tensor  # (P, 4) box codes of the positives, in the order of labels >= 0
    positives: torch.Tensor  # () float: how many anchors are positive


class DetectionLoss:
    def __init__(self, anchors: Anchors, num_classes: int, cfg: LossConfig | None = None):
        self.anchors, self.num_classes, self.cfg = anchors, num_classes, cfg or LossConfig()
        self._row_cache: dict = {}

    def assign(self, targets: list[dict], sizes: list[tuple[int, int]], device=None,
               image_size: tuple[int, int] | None = None) -> Assignment:
        """Match a batch's boxes to the anchors of feature maps of ``sizes`` (one (h, w) per
        level); ``image_size`` (h, w) places the anchors as ``detect`` does (``Anchors.boxes``)."""
        anchors = self.anchors.boxes(sizes, device, image_size)
        boxes = [t["boxes"].to(anchors.device) for t in targets]
        match = match_anchors_batch(anchors, boxes, self.cfg)
        pos = match >= 0
        img, anchor = pos.nonzero(as_tuple=True)
        padded, _ = _pad(boxes, anchors.device)
        labels_padded = torch.zeros(padded.shape[:2], dtype=torch.long, device=anchors.device)
        for i, t in enumerate(targets):
            labels_padded[i, :len(t["labels"])] = t["labels"].to(anchors.device)
        labels = torch.where(pos, labels_padded.gather(1, match.clamp(min=0)), match)
        codes = encode_boxes(padded[img, match[img, anchor]], anchors[anchor])
        return Assignment(labels, codes, pos.sum().float())

    def sums_from(self, cls_outputs: list[torch.Tensor], box_outputs: list[torch.Tensor], assignment: Assignment
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed focal loss over all but ignored anchors, summed Huber loss of the
        positives' box codes (/4 per box)."""
        b, c = cls_outputs[0].shape[0], self.num_classes
        # rows ordered (level, image, anchor): each level's gradient comes back as one
        # contiguous slice, in its head's own (channels_last) layout, not a strided view that
        # the convolution's backward must copy and reduce over slowly
        cls = torch.cat([x.permute(0, 2, 3, 1).reshape(-1) for x in cls_outputs]).float().view(-1, c)
        box = torch.cat([x.permute(0, 2, 3, 1).reshape(-1) for x in box_outputs]).float().view(-1, 4)
        labels = assignment.labels
        rows = self._rows(b, [x.shape[-2] * x.shape[-1] * (x.shape[1] // c) for x in cls_outputs], labels.device)
        pos = labels >= 0
        pos_rows = rows[pos]  # in the order of assignment.codes: (image, anchor)
        weight = torch.empty(cls.shape[0], 1, dtype=cls.dtype, device=cls.device)
        weight[rows.reshape(-1), 0] = (labels != -2).reshape(-1).to(cls.dtype)
        cls_sum = focal_loss_sum(cls, pos_rows * c + labels[pos], weight, self.cfg.alpha, self.cfg.gamma)
        box_sum = F.huber_loss(box[pos_rows], assignment.codes, delta=self.cfg.huber_delta, reduction="sum") / 4.0
        return cls_sum, box_sum

    def _rows(self, batch: int, per_level: list[int], device) -> torch.Tensor:
        """(B, A): the row of each image's anchor among rows ordered (level, image, anchor)."""
        key = (batch, tuple(per_level), str(device))
        if key not in self._row_cache:
            rows, offset = [], 0
            for n in per_level:
                rows.append(offset + torch.arange(batch)[:, None] * n + torch.arange(n)[None, :])
                offset += batch * n
            self._row_cache[key] = torch.cat(rows, 1).to(device)
        return self._row_cache[key]

    def sums(self, cls_outputs: list[torch.Tensor], box_outputs: list[torch.Tensor],
             targets: list[dict], image_size: tuple[int, int] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed class loss, summed box loss (/4 per box), and the number of positives.
        ``image_size`` (h, w) places the anchors as ``detect`` does (see ``Anchors.boxes``)."""
        assignment = self.assign(targets, [tuple(x.shape[-2:]) for x in cls_outputs], cls_outputs[0].device,
                                 image_size)
        return (*self.sums_from(cls_outputs, box_outputs, assignment), assignment.positives)

    def __call__(self, cls_outputs, box_outputs, targets=None, positives_total: torch.Tensor | None = None,
                 world_size: int = 1, image_size: tuple[int, int] | None = None,
                 assignment: Assignment | None = None) -> dict[str, torch.Tensor]:
        """Losses normalised by the positives of the whole (global) batch; with
        ``world_size`` processes each one's loss is scaled so that DDP's gradient
        average equals the single-process gradient of the global batch. Give
        ``assignment`` (from ``assign``) instead of ``targets`` when it is already made."""
        if assignment is None:
            assignment = self.assign(targets, [tuple(x.shape[-2:]) for x in cls_outputs], cls_outputs[0].device,
                                     image_size)
        cls_sum, box_sum = self.sums_from(cls_outputs, box_outputs, assignment)
        pos = assignment.positives
        total_pos = (positives_total if positives_total is not None else pos).clamp(min=1.0)
        scale = world_size / total_pos
        cls_loss, box_loss = cls_sum * scale, box_sum * scale
        return {"loss": cls_loss + self.cfg.box_weight * box_loss, "cls": cls_loss, "box": box_loss, "positives": pos}
