"""Detections on image files, in their own pixel coordinates, with class names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..model import EfficientDet, load_model
from .data import MEAN, STD, DataError, letterbox

__all__ = ["predict"]


@torch.no_grad()
def predict(model: EfficientDet | str | os.PathLike, images: Sequence[str | os.PathLike | Image.Image],
            score_threshold: float = 0.3, iou_threshold: float = 0.5, max_detections: int = 100,
            device: str = "cpu") -> list[dict]:
    """One dict per image: ``boxes`` (x1, y1, x2, y2 in the image's pixels), ``scores``,
    ``labels`` (0-based) and ``names`` (the checkpoint's class names, or the label as text).
    ``model`` is a model or a checkpoint path; images are paths or PIL images."""
    if not isinstance(model, EfficientDet):
        model = load_model(model)
    model.eval().to(device)
    names = model.class_names or [str(i) for i in range(model.spec.num_classes)]
    out = []
    for item in images:
        try:
            if isinstance(item, Image.Image):
                image = TF.pil_to_tensor(item.convert("RGB"))
            else:
                with Image.open(Path(item)) as im:
                    image = TF.pil_to_tensor(im.convert("RGB"))
        except OSError as e:
            raise DataError(f"{item}: cannot read the image ({e})") from None
        h, w = image.shape[-2:]
        x, _, scale = letterbox(image, None, model.spec.image_size)
        x = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), MEAN, STD)
        det = model.detect(x[None].to(device), score_threshold, iou_threshold, max_detections)[0]
        boxes = det["boxes"].cpu() / scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        labels = det["labels"].cpu()
        out.append({"boxes": boxes, "scores": det["scores"].cpu(), "labels": labels,
                    "names": [names[i] for i in labels.tolist()]})
    return out
