"""A built-in, deterministic synthetic detection data set, written in COCO format.

Shapes (circle, square, triangle, diamond, cross, ring...) in random colours and sizes
on smooth textured backgrounds: real images with real boxes, generated offline from a
seed, so training and evaluation run anywhere and tests have ground truth.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .._io import atomic_write_text
from ..errors import ConfigError

__all__ = ["SHAPES", "make_synthetic", "write_split"]

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "bar")


def _background(size: int, rng: random.Random) -> Image.Image:
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    noise = torch.rand(1, 3, 6, 6, generator=g)
    smooth = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    fine = torch.rand(1, 3, size, size, generator=g) * 0.15
    img = (0.25 + 0.5 * smooth + fine).clamp(0, 1)[0].permute(1, 2, 0)
    return Image.fromarray((img * 255).to(torch.uint8).numpy(), "RGB")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], color) -> None:
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)
    elif shape == "cross":
        draw.rectangle((x0, cy - h / 6, x1, cy + h / 6), fill=color)
        draw.rectangle((cx - w / 6, y0, cx + w / 6, y1), fill=color)
    elif shape == "ring":
        draw.ellipse(box, outline=color, width=max(2, int(w / 6)))
    elif shape == "star":
        pts = []
        for i in range(10):
            r = (w / 2) if i % 2 == 0 else (w / 5)
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a) * h / w))
        draw.polygon(pts, fill=color)
    else:  # bar
        draw.rectangle((x0, cy - h / 5, x1, cy + h / 5), fill=color)


def write_split(out: Path, num_images: int, image_size: int, num_classes: int, seed: int,
                min_objects: int = 1, max_objects: int = 4, min_size: float = 0.12, max_size: float = 0.45) -> Path:
    """Write ``out/images/*.png`` and ``out/annotations.json``; returns the JSON path."""
    if not 1 <= num_classes <= len(SHAPES):
        raise ConfigError(f"num_classes must be 1..{len(SHAPES)}")
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img = _background(image_size, rng)
        draw = ImageDraw.Draw(img)
        placed: list[tuple[float, float, float, float]] = []
        for _ in range(rng.randint(min_objects, max_objects)):
            for _attempt in range(20):
                s = rng.uniform(min_size, max_size) * image_size
                w, h = s * rng.uniform(0.8, 1.25), s * rng.uniform(0.8, 1.25)
                x0, y0 = rng.uniform(0, image_size - w), rng.uniform(0, image_size - h)
                box = (x0, y0, x0 + w, y0 + h)
                if all(_iou(box, p) < 0.1 for p in placed):
                    break
            else:
                continue
            cls = rng.randrange(num_classes)
            color = tuple(rng.randrange(256) for _ in range(3))
            _draw(draw, SHAPES[cls], box, color)
            placed.append(box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                "bbox": [round(box[0], 2), round(box[1], 2), round(w, 2), round(h, 2)],
                "area": round(w * h, 2), "iscrowd": 0,
            })
        name = f"{i:06d}.png"
        img.save(out / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": image_size, "height": image_size})
    categories = [{"id": c + 1, "name": SHAPES[c]} for c in range(num_classes)]
    path = out / "annotations.json"
    atomic_write_text(path, json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_synthetic(out: str | Path, num_train: int = 512, num_val: int = 128, image_size: int = 128,
                   num_classes: int = 3, seed: int = 0) -> Path:
    """``out/train`` and ``out/val`` in COCO format (the same seed gives the same files)."""
    out = Path(out)
    write_split(out / "train", num_train, image_size, num_classes, seed)
    write_split(out / "val", num_val, image_size, num_classes, seed + 1_000_003)
    return out
