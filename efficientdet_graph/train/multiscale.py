"""The multi-scale synthetic task: a detection set on which the feature network decides.

Today's ``shapes`` set (``synthetic.py``) puts 1-4 objects of 15-72 px on 128 px
images: with anchors at P3-P7 most levels never see a positive, and nothing needs
information from another scale, so every neck scores alike. This set is built so
that cross-scale fusion is what separates a good neck from a bad one:

* **Sizes log-uniform over more than 4 octaves** (5 %-90 % of the image side, 4.2
  octaves), so every pyramid level P3-P7 has objects (and positive anchors) to learn.
* **Classes that need context from another scale.**
  - ``mark_red`` / ``mark_green`` / ``mark_blue``: small diamond marks (5-8.5 % of the
    side) in random colours on a grey plate, one to four of them (a 2x2 grid); their class
    is the colour of the panel the plate sits on, which keeps a ring of at least 10 px
    around the plate. The plate reaches 48 px beyond the marks on every side: with the
    reference schedule's one neck layer and one head layer, a P3 prediction of the
    no-fusion neck sees at most 48.5 px from its cell's centre (its exact receptive
    field), so the no-fusion neck cannot name a mark at P3, while the panel's colour
    fills P5-P7's view (docs/tasks.md: plates of 18 px were seen past by every neck).
    The same mark *outside* a panel is a distractor, not an object.
    A small object's class lives in a large region: top-down information.
  - ``panel_red`` / ``panel_green`` / ``panel_blue``: large textured panels, told apart by
    colour: the coarse levels learn the colour that the marks need.
  - ``disc`` / ``disc_dot``: large discs that differ only by a small dot at the centre
    (a tenth of the diameter): a large object decided by a small detail, bottom-up
    information.
  - ``triangle`` / ``star``: ordinary objects at every size.

  Version 4 put one mark on a plate: each fusing neck then learned the marks in only some
  seeds of the reference schedule, so seed noise hid the neck (docs/tasks.md); a plate
  now carries the mark sizes still to place, up to four, which gives about 1.6 times the
  marks. Two earlier versions named the marks by a panel's frame (solid or dashed, then one of
  four colours) with a single panel class: no trained network learned either within the
  reference schedule -- every neck was at chance on the marks -- so the neck could not
  matter (docs/tasks.md).
* **Clutter.** Multi-octave textured backgrounds, random strokes, and distractor shapes
  (rings, bars, crosses, stray marks) that are not objects; 5-15 objects per image,
  drawn from large to small so the small ones partly occlude the large ones (each object
  keeps at least 40 % of its box visible -- a panel under a plate, 40 % of what the plate
  left --, no two overlap by an IoU of 0.3 or more, and a disc's dot is never covered).

An object's size is ``sqrt(w * h)`` of its box: it is drawn log-uniformly first, and the
class is then chosen among those that exist at that size, so the size distribution does
not depend on the class mix. Everything comes from seeded random streams, one per chunk of
64 images: the same seed writes the same files, whatever the number of processes.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .._io import atomic_write_text
from ..errors import ConfigError

__all__ = ["MULTISCALE_CLASSES", "PANEL_COLOURS", "MultiscaleConfig", "write_multiscale_split", "make_multiscale"]

# A panel's colour is its class and the class of the marks on it.
PANEL_COLOURS = {"red": (210, 50, 50), "green": (50, 180, 70), "blue": (60, 90, 220)}
MULTISCALE_CLASSES = (*(f"panel_{c}" for c in PANEL_COLOURS), *(f"mark_{c}" for c in PANEL_COLOURS), "disc",
                      "disc_dot", "triangle", "star")

# Size range of each class, as fractions of the image side: the classes that exist at a size.
_RANGES = {
    "panel": (0.35, 1.0),
    "mark": (0.0, 0.085),
    "disc": (0.12, 0.6),
    "triangle": (0.0, 1.0),
    "star": (0.0, 1.0),
}
# How often each kind is picked where it exists: the context classes are the point of the
# set, so they are favoured over the ordinary shapes.
_WEIGHTS = {"panel": 6.0, "mark": 20.0, "disc": 2.0, "triangle": 1.0, "star": 1.0}
_MAX_COVER = 0.6  # at most this share of an object's box may be hidden by later objects
_MAX_IOU = 0.3  # an object overlaps an earlier one by less than this IoU
_PLATE_MARGIN = 48.0  # px of grey plate around a mark: beyond what a no-fusion P3 prediction sees
_RING = 10.0  # px of its panel a plate leaves on every side: the colour the marks are named by
_GROUP = 4  # marks one plate carries at most (a 2x2 grid): more marks per hosting panel
_GAP = 4.0  # px between the cells of a plate's grid


@dataclass(frozen=True)
class MultiscaleConfig:
    """Settings of the multi-scale set (one split is ``num_images`` of them)."""

    image_size: int = 192
    min_size: float = 0.05  # object size range, fractions of the image side (log-uniform)
    max_size: float = 0.9
    min_objects: int = 5
    max_objects: int = 15
    distractors: tuple[int, int] = (2, 6)  # unlabelled shapes per image
    stray_marks: tuple[int, int] = (1, 3)  # marks outside any panel (not objects)

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= 8192:
            raise ConfigError(f"image_size {self.image_size}: allowed 32..8192")
        if not 0 < self.min_size < self.max_size <= 1:
            raise ConfigError(f"object sizes {self.min_size}..{self.max_size}: need 0 < min < max <= 1")
        if self.min_size * self.image_size < 4:
            raise ConfigError(f"min_size {self.min_size} at {self.image_size} px is under 4 px: too small to draw")
        if not 1 <= self.min_objects <= self.max_objects <= 100:
            raise ConfigError(f"objects per image {self.min_objects}..{self.max_objects}: need 1 <= min <= max <= 100")


def _background(size: int, rng: random.Random) -> Image.Image:
    """Value noise at three octaves plus fine grain: texture at every pyramid level."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    img = torch.zeros(1, 3, size, size)
    for cells, weight in ((4, 0.45), (12, 0.25), (size // 6, 0.15)):
        noise = torch.rand(1, 3, cells, cells, generator=g)
        img += weight * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    img += 0.12 * torch.rand(1, 3, size, size, generator=g)
    img = (img - img.amin()) / (img.amax() - img.amin() + 1e-6)
    img = 0.15 + 0.7 * img
    return Image.fromarray((img[0].permute(1, 2, 0) * 255).to(torch.uint8).numpy(), "RGB")


def _color(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))


def _box(cx: float, cy: float, s: float, rng: random.Random) -> tuple[float, float, float, float]:
    a = math.sqrt(rng.uniform(0.8, 1.25))  # aspect, keeping sqrt(w * h) == s
    w, h = s * a, s / a
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _inside(box, size: int) -> bool:
    return box[0] >= 0 and box[1] >= 0 and box[2] <= size and box[3] <= size


def _overlap(a, b) -> float:
    """Area of the intersection of two boxes."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _area(b) -> float:
    return (b[2] - b[0]) * (b[3] - b[1])


def _draw_mark(draw: ImageDraw.ImageDraw, box, color) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)


def _draw_star(draw: ImageDraw.ImageDraw, box, color) -> None:
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    pts = []
    for i in range(10):
        r = 0.5 if i % 2 == 0 else 0.2
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + r * w * math.cos(a), cy + r * h * math.sin(a)))
    draw.polygon(pts, fill=color)


def _panel_colour(name: str, rng: random.Random) -> tuple[int, int, int]:
    """One of the panel colours, jittered so that no exact value is the cue."""
    return tuple(min(255, max(0, v + rng.randint(-20, 20))) for v in PANEL_COLOURS[name])


def _draw_panel(img: Image.Image, box, colour: str, rng: random.Random) -> None:
    """A textured rectangle of one of the panel colours: its colour is its class."""
    x0, y0, x1, y1 = box
    fill = _panel_colour(colour, rng)
    g = np.random.default_rng(rng.randrange(2**31))
    w, h = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    tex = np.asarray(fill, dtype=np.float32)[None, None, :] + g.normal(0, 18, size=(h, w, 1)).astype(np.float32)
    img.paste(Image.fromarray(tex.clip(0, 255).astype(np.uint8), "RGB"), (round(x0), round(y0)))


def _group(sizes: list[float], rng: random.Random) -> tuple[list[tuple], float, float]:
    """Boxes for marks of the given sizes on one plate -- one, two side by side, or a 2x2
    grid (a cell left empty for three) -- relative to the group's top-left corner; and the
    group's width and height."""
    boxes = [_box(0.0, 0.0, s, rng) for s in sizes]
    cell = max(max(b[2] - b[0], b[3] - b[1]) for b in boxes) + _GAP
    cols = 1 if len(boxes) == 1 else 2
    rows = 1 if len(boxes) <= 2 else 2
    if len(boxes) == 2 and rng.random() < 0.5:
        cols, rows = 1, 2
    cells = [(c, r) for r in range(rows) for c in range(cols)]
    if len(boxes) == 3:
        cells.pop(rng.randrange(4))
    return ([(b[0] + (c + 0.5) * cell, b[1] + (r + 0.5) * cell, b[2] + (c + 0.5) * cell, b[3] + (r + 0.5) * cell)
             for b, (c, r) in zip(boxes, cells)], cols * cell, rows * cell)


def _longest(s: float) -> tuple[float, float]:
    """The room a mark of size ``s`` may need each way: its longer side at aspect 1.25."""
    return 1.12 * s, 1.12 * s


def _hosts(panel, width: float, height: float) -> bool:
    """Whether a panel has room for a plate over a group of marks ``width`` x ``height``."""
    return (panel[2] - panel[0] >= width + 2 * (_PLATE_MARGIN + _RING)
            and panel[3] - panel[1] >= height + 2 * (_PLATE_MARGIN + _RING))


def _grown(box, by: float) -> tuple[float, float, float, float]:
    return (box[0] - by, box[1] - by, box[2] + by, box[3] + by)


def _draw_distractor(draw: ImageDraw.ImageDraw, size: int, cfg: MultiscaleConfig, rng: random.Random) -> None:
    kind = rng.choice(("stroke", "ring", "bar", "cross"))
    s = size * math.exp(rng.uniform(math.log(cfg.min_size), math.log(cfg.max_size * 0.6)))
    cx, cy = rng.uniform(0, size), rng.uniform(0, size)
    # half of them in a panel colour: an image's colours alone do not name its marks
    color = _panel_colour(rng.choice(tuple(PANEL_COLOURS)), rng) if rng.random() < 0.5 else _color(rng)
    x0, y0, x1, y1 = cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2
    if kind == "stroke":
        a = rng.uniform(0, math.pi)
        draw.line((cx - s * math.cos(a), cy - s * math.sin(a), cx + s * math.cos(a), cy + s * math.sin(a)),
                  fill=color, width=max(1, round(s / 12)))
    elif kind == "ring":
        draw.ellipse((x0, y0, x1, y1), outline=color, width=max(1, round(s / 8)))
    elif kind == "bar":
        draw.rectangle((x0, cy - s / 8, x1, cy + s / 8), fill=color)
    else:
        draw.rectangle((x0, cy - s / 10, x1, cy + s / 10), fill=color)
        draw.rectangle((cx - s / 10, y0, cx + s / 10, y1), fill=color)


def _classes_at(frac: float, has_panel: bool) -> list[str]:
    kinds = [k for k, (lo, hi) in _RANGES.items() if lo <= frac <= hi and (k != "mark" or has_panel)]
    return kinds


def _visible_after(box, cover_boxes: list, extra) -> float:
    """The share of ``box`` still visible once ``extra`` is drawn over it and the boxes
    already covering it (a coarse 16x16 raster of the box: exact enough for a 50 % rule)."""
    xs = np.linspace(box[0], box[2], 16, endpoint=False) + (box[2] - box[0]) / 32
    ys = np.linspace(box[1], box[3], 16, endpoint=False) + (box[3] - box[1]) / 32
    gx, gy = np.meshgrid(xs, ys)
    hidden = np.zeros_like(gx, dtype=bool)
    for b in [*cover_boxes, extra]:
        hidden |= (gx >= b[0]) & (gx < b[2]) & (gy >= b[1]) & (gy < b[3])
    return 1.0 - hidden.mean()


#: images per chunk: each chunk has its own random stream, so chunks are written in
#: parallel and the files do not depend on how many processes wrote them
CHUNK = 64


def write_multiscale_split(out: Path, num_images: int, seed: int, cfg: MultiscaleConfig = MultiscaleConfig(),
                           workers: int = 1) -> Path:
    """Write ``out/images/*.png`` and ``out/annotations.json`` (COCO); returns the JSON path.
    ``workers`` processes write the chunks of ``CHUNK`` images; the files are the same for
    any number of them, and the first k images of a longer split are the k-image split."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    chunks = [(out, start, min(CHUNK, num_images - start), seed, cfg) for start in range(0, num_images, CHUNK)]
    if workers > 1 and len(chunks) > 1:
        import multiprocessing

        # fork where there is one (no re-import); one torch thread per worker process
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ctx.Pool(min(workers, len(chunks)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            parts = pool.starmap(_write_chunk, chunks)
    else:
        parts = [_write_chunk(*c) for c in chunks]
    images, annotations = [], []
    for part_images, part_annotations in parts:
        images += part_images
        for a in part_annotations:
            annotations.append({"id": len(annotations) + 1, **a})
    categories = [{"id": c + 1, "name": n} for c, n in enumerate(MULTISCALE_CLASSES)]
    path = out / "annotations.json"
    atomic_write_text(path, json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _write_chunk(out: Path, start: int, count: int, seed: int, cfg: MultiscaleConfig) -> tuple[list, list]:
    """Images ``start .. start+count-1`` of a split, from the chunk's own random stream."""
    rng = random.Random(f"multiscale/{seed}/{start // CHUNK}")  # a str seed is hashed stably (sha512)
    size = cfg.image_size
    images, annotations = [], []
    lo, hi = math.log(cfg.min_size), math.log(cfg.max_size)
    pending: list[float] = []
    for i in range(start, start + count):
        img = _background(size, rng)
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(*cfg.distractors)):
            _draw_distractor(draw, size, cfg, rng)
        # sizes first (log-uniform), drawn from large to small: small objects occlude large ones
        # stratified: with n objects, one size in each n-th of the log range -- the marginal
        # stays exactly log-uniform, and an image never has to fit several huge objects
        n = rng.randint(cfg.min_objects, cfg.max_objects)
        fracs = [math.exp(lo + (hi - lo) * (k + rng.random()) / n) for k in range(n)]
        # a size that found no room in an earlier image is tried again here, so that what is
        # written keeps the drawn distribution instead of losing crowded sizes -- as many as
        # the image has room for under max_objects; the others wait for the next image
        retry, pending = pending[:cfg.max_objects - n], pending[cfg.max_objects - n:]
        fracs = sorted(retry + fracs, reverse=True)
        # {"box", "cls", "covers": [boxes drawn over it], "keep": box never covered,
        #  "min_visible": share of the box that must stay visible, "plate": a mark's plate}
        placed: list[dict] = []
        queue: list[tuple[float, dict | None]] = [(f, None) for f in fracs]  # (size, the panel it must mark)
        while queue:
            frac, forced = queue.pop(0)
            s = frac * size
            host = None
            if forced is not None:
                panels, kind = [forced], "mark"
            else:
                panels = [p for p in placed if p["cls"].startswith("panel_") and _hosts(p["box"], *_longest(s))]
                kinds = _classes_at(frac, bool(panels))
                kind = rng.choices(kinds, weights=[_WEIGHTS[k] for k in kinds])[0]
            # a newly placed panel's plate carries the mark sizes still to place, up to _GROUP
            # of them: the largest group that finds room (marks are what the set is short of)
            extra = [n for n, (f, h) in enumerate(queue) if h is None and f <= _RANGES["mark"][1]][:_GROUP - 1] \
                if forced is not None else []
            found = None
            for k in range(len(extra) + 1, 0, -1):
                sizes = [s] + [queue[n][0] * size for n in extra[:k - 1]]
                for _attempt in range(100 if k == 1 else 25):
                    if kind == "mark":  # the plate inside the panel, leaving its ring
                        host = rng.choice(panels)
                        rel, gw, gh = _group(sizes, rng)
                        if not _hosts(host["box"], gw, gh):
                            continue
                        hx0, hy0, hx1, hy1 = host["box"]
                        edge = _PLATE_MARGIN + _RING
                        gx, gy = rng.uniform(hx0 + edge, hx1 - edge - gw), rng.uniform(hy0 + edge, hy1 - edge - gh)
                        boxes = [(gx + r[0], gy + r[1], gx + r[2], gy + r[3]) for r in rel]
                        cover = _grown((gx, gy, gx + gw, gy + gh), _PLATE_MARGIN)  # drawn over earlier objects
                    else:
                        cx, cy = rng.uniform(s / 2, size - s / 2), rng.uniform(s / 2, size - s / 2)
                        boxes = [_box(cx, cy, s, rng)]
                        cover = boxes[0]
                    if not all(_inside(box, size) for box in boxes):
                        continue
                    if any(_overlap(box, p["box"]) > _MAX_IOU * (_area(box) + _area(p["box"]) - _overlap(box, p["box"]))
                           for box in boxes for p in placed):
                        continue  # two objects in nearly one place are one detection, not two
                    # the colour around a plate is its host's alone: no other panel within 8 px of it
                    if kind == "mark" and any(_overlap(_grown(cover, 8), p["box"]) > 0 for p in placed
                                              if p is not host and p["cls"].startswith("panel_")):
                        continue
                    if kind == "panel" and any(_overlap(_grown(p["plate"], 8), cover) > 0 for p in placed
                                               if "plate" in p):
                        continue
                    # every object keeps 40 % of its box visible -- a host, of what its plate
                    # left: the plate itself is exempt, the ring is its rule -- and a disc's
                    # centre stays as it was drawn
                    if any(_overlap(cover, p["box"]) > 0 and (
                            (p is not host and _visible_after(p["box"], p["covers"], cover) < p["min_visible"])
                            or (p["keep"] is not None and _overlap(cover, p["keep"]) > 0)) for p in placed):
                        continue
                    found = boxes
                    break
                if found is not None:
                    break
            if found is None:
                if len(pending) < cfg.max_objects:
                    pending.append(frac)
                continue
            for n in sorted(extra[:len(found) - 1], reverse=True):  # the group's other sizes are placed
                queue.pop(n)
            box = found[0]
            for p in placed:
                if _overlap(cover, p["box"]) > 0:
                    p["covers"].append(cover)
            if host is not None:
                host["min_visible"] = (1 - _MAX_COVER) * _visible_after(host["box"], host["covers"], cover)
            keep = None
            if kind == "panel":
                cls = f"panel_{rng.choice(tuple(PANEL_COLOURS))}"
                _draw_panel(img, box, cls.removeprefix("panel_"), rng)
            elif kind == "mark":
                cls = f"mark_{host['cls'].removeprefix('panel_')}"
                grey = rng.randint(90, 170)
                draw.rectangle(cover, fill=tuple(grey + rng.randint(-8, 8) for _ in range(3)))
                for box in found:
                    _draw_mark(draw, box, _color(rng))
                    placed.append({"box": box, "cls": cls, "covers": [], "keep": None, "plate": cover,
                                   "min_visible": 1 - _MAX_COVER})
                continue
            elif kind == "disc":
                cls = rng.choice(("disc", "disc_dot"))
                draw.ellipse(box, fill=_color(rng))
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                r = max(1.0, 0.05 * (box[2] - box[0]))
                keep = (cx - 3 * r, cy - 3 * r, cx + 3 * r, cy + 3 * r)  # a plain disc's centre stays plain
                if cls == "disc_dot":
                    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_color(rng))
            elif kind == "triangle":
                cls = "triangle"
                draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=_color(rng))
            else:
                cls = "star"
                _draw_star(draw, box, _color(rng))
            placed.append({"box": box, "cls": cls, "covers": [], "keep": keep, "min_visible": 1 - _MAX_COVER})
            if kind == "panel":
                # a plate is most of a panel: its marks come now, with the largest mark size
                # still to place, before smaller objects fill the panel and leave no room
                k = next((n for n, (f, h) in enumerate(queue) if h is None and f <= _RANGES["mark"][1]
                          and _hosts(box, *_longest(f * size))), None)
                if k is not None:
                    queue.insert(0, (queue.pop(k)[0], placed[-1]))
        # stray marks: the marks' look outside any panel, and not objects
        for _ in range(rng.randint(*cfg.stray_marks)):
            s = size * math.exp(rng.uniform(lo, math.log(min(cfg.max_size, _RANGES["mark"][1]))))
            for _attempt in range(20):
                box = _box(rng.uniform(s / 2, size - s / 2), rng.uniform(s / 2, size - s / 2), s, rng)
                if _inside(box, size) and not any(_overlap(box, p["box"]) > 0 for p in placed):
                    _draw_mark(draw, box, _color(rng))
                    break
        for p in placed:
            x0, y0, x1, y1 = p["box"]
            annotations.append({
                "image_id": i + 1,
                "category_id": MULTISCALE_CLASSES.index(p["cls"]) + 1,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0,
            })
        name = f"{i:06d}.png"
        img.save(out / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
    return images, annotations


def make_multiscale(out: str | Path, num_train: int = 1024, num_val: int = 256, num_test: int = 256, seed: int = 0,
                    cfg: MultiscaleConfig = MultiscaleConfig(), workers: int = 1) -> Path:
    """``out/train``, ``out/val`` (the search-val split: what proxies and studies see) and
    ``out/test`` (only for final claims), each from its own seed; ``workers`` processes."""
    out = Path(out)
    for split, n, offset in (("train", num_train, 0), ("val", num_val, 1_000_003), ("test", num_test, 2_000_029)):
        if n > 0:
            write_multiscale_split(out / split, n, seed + offset, cfg, workers)
    return out
