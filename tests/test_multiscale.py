"""The multi-scale task: deterministic, sizes log-uniform over > 4 octaves, positives at
every level, and context classes that mean what the docs say.

Every check reads the written files (COCO JSON and PNGs) and computes from them with
code written here -- anchors and matching included -- not the generator's bookkeeping
nor the project's anchor code."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientdet_graph.train.multiscale import MULTISCALE_CLASSES, MultiscaleConfig, make_multiscale

N_IMAGES = 96


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multiscale")
    make_multiscale(root, num_train=N_IMAGES, num_val=8, num_test=8, seed=3)
    return root


def _coco(root: Path, split: str = "train") -> dict:
    return json.loads((root / split / "annotations.json").read_text())


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_other_files(task, tmp_path):
    make_multiscale(tmp_path / "again", num_train=6, num_val=2, num_test=2, seed=3)
    make_multiscale(tmp_path / "other", num_train=6, num_val=2, num_test=2, seed=4)
    make_multiscale(tmp_path / "first6", num_train=6, num_val=2, num_test=2, seed=3)
    assert _digest(tmp_path / "again") == _digest(tmp_path / "first6")
    assert _digest(tmp_path / "again" / "train") != _digest(tmp_path / "other" / "train")
    # the three splits are different images
    assert _digest(tmp_path / "again" / "val" / "images") != _digest(tmp_path / "again" / "test" / "images")


def test_classes_objects_per_image_and_splits(task):
    coco = _coco(task)
    assert [c["name"] for c in coco["categories"]] == list(MULTISCALE_CLASSES)
    assert 6 <= len(MULTISCALE_CLASSES) <= 10
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=N_IMAGES + 1)[1:]
    assert per_image.min() >= 3 and per_image.max() <= 15
    assert 7 <= per_image.mean() <= 14  # "several objects per image (5-20)"
    for split in ("val", "test"):
        assert len(_coco(task, split)["images"]) == 8
    assert {a["category_id"] for a in coco["annotations"]} == set(range(1, len(MULTISCALE_CLASSES) + 1))


def test_sizes_are_log_uniform_over_more_than_four_octaves(task):
    cfg = MultiscaleConfig()
    side = cfg.image_size
    sizes = np.array([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in _coco(task)["annotations"]])
    lo, hi = cfg.min_size * side, cfg.max_size * side
    assert math.log2(hi / lo) > 4
    assert sizes.min() >= lo * 0.999 and sizes.max() <= hi * 1.001
    assert math.log2(sizes.max() / sizes.min()) > 4
    # Kolmogorov-Smirnov distance of log-size from the uniform law on [log lo, log hi],
    # computed here: the largest gap between the empirical and the uniform CDF
    u = np.sort((np.log(sizes) - math.log(lo)) / (math.log(hi) - math.log(lo)))
    n = len(u)
    d = max(np.max(np.arange(1, n + 1) / n - u), np.max(u - np.arange(n) / n))
    assert d < 0.08, f"KS distance {d:.3f} from log-uniform over {n} objects"
    # and every octave holds a fair share (uniform: one octave = 1/4.17 of the objects)
    octaves = np.histogram(np.log2(sizes / lo), bins=4, range=(0, 4))[0] / n
    assert octaves.min() > 0.15, octaves


def _anchors(side: int, levels=range(3, 8), scale=1.5, num_scales=3,
             ratios=((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))) -> tuple[np.ndarray, np.ndarray]:
    """EfficientDet's anchors written out: the level-L map has n_L = ceil(n_{L-1} / 2) cells
    (n_0 = the image side), its stride is side / n_L (the official placement: 2^L only where
    2^L divides the side), centres at (i + 0.5) * stride, sides scale * stride * 2^(k / num_scales)
    times each aspect pair. Boxes and their level."""
    boxes, level = [], []
    n = side
    for L in range(1, max(levels) + 1):
        n = (n + 1) // 2
        if L not in levels:
            continue
        stride = side / n
        c = (np.arange(n) + 0.5) * stride
        cy, cx = np.meshgrid(c, c, indexing="ij")
        for k in range(num_scales):
            base = scale * stride * 2 ** (k / num_scales)
            for ax, ay in ratios:
                w, h = base * ax, base * ay
                b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).reshape(-1, 4)
                boxes.append(b)
                level += [L] * len(b)
    return np.concatenate(boxes), np.array(level)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def level_shares(coco: dict, side: int) -> tuple[dict, dict]:
    """Share of positive anchors and of objects per level (an object's level: where its
    best anchor is); positive = IoU >= 0.5, plus each object's best anchor."""
    anchors, level = _anchors(side)
    pos = dict.fromkeys(range(3, 8), 0)
    objs = dict.fromkeys(range(3, 8), 0)
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        by_image.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    for boxes in by_image.values():
        iou = _iou(anchors, np.array(boxes))
        positive = iou.max(1) >= 0.5
        best = iou.argmax(0)
        positive[best] = True
        for L in range(3, 8):
            pos[L] += int(positive[level == L].sum())
        for b in best:
            objs[int(level[b])] += 1
    tp, to = sum(pos.values()), sum(objs.values())
    return {L: v / tp for L, v in pos.items()}, {L: v / to for L, v in objs.items()}


def test_every_output_level_gets_positives(task):
    pos, objs = level_shares(_coco(task), MultiscaleConfig().image_size)
    for L in range(3, 7):
        assert pos[L] > 0.10 and objs[L] > 0.10, (L, pos, objs)
    # P7's 2x2 map is thin (docs/tasks.md says so), but it is not empty
    assert pos[7] > 0.004 and objs[7] > 0.004, (pos, objs)


def test_docs_table_of_level_shares_matches_the_data(task):
    """docs/tasks.md states the per-level shares; a fresh sample must agree with them."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "tasks.md").read_text()
    pos, objs = level_shares(_coco(task), MultiscaleConfig().image_size)
    for L in range(3, 8):
        row = next(line for line in text.splitlines() if line.startswith(f"| P{L} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        doc_pos, doc_objs = float(cells[1].rstrip("%")) / 100, float(cells[2].rstrip("%")) / 100
        assert abs(doc_pos - pos[L]) < 0.05, (L, doc_pos, pos[L])
        assert abs(doc_objs - objs[L]) < 0.05, (L, doc_objs, objs[L])


def _inside(inner, outer, margin: float = 0.0) -> bool:
    return (inner[0] >= outer[0] + margin and inner[1] >= outer[1] + margin
            and inner[0] + inner[2] <= outer[0] + outer[2] - margin
            and inner[1] + inner[3] <= outer[1] + outer[3] - margin)


# The panel colours, written here (not imported): a panel's class and its marks' class
# must be the colour seen in the PNG.
PALETTE = {"red": (210, 50, 50), "green": (50, 180, 70), "blue": (60, 90, 220)}


def _palette_counts(img: np.ndarray, pts) -> dict[str, int]:
    """How many of the points have each palette colour (nearest, within 45 in RGB; panels
    are jittered by up to 20 a channel and textured)."""
    counts: dict[str, int] = {}
    for px, py in pts:
        rgb = img[min(img.shape[0] - 1, max(0, int(py))), min(img.shape[1] - 1, max(0, int(px)))]
        name, d = min(((n, np.linalg.norm(rgb - np.array(c))) for n, c in PALETTE.items()), key=lambda z: z[1])
        if d < 45:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _border(box, inset: float = 2.0):
    x, y, w, h = box
    pts = []
    for t in np.linspace(0.1, 0.9, 24):
        pts += [(x + t * w, y + inset), (x + t * w, y + h - inset), (x + inset, y + t * h), (x + w - inset, y + t * h)]
    return pts


def test_panels_and_marks_are_named_by_a_colour_no_p3_feature_sees(task):
    """A panel's class is its colour; a mark's class is the colour of a panel it sits well
    inside; around the mark, out to 14 px beyond its box, no pixel has a panel colour but
    where a later object sits (the grey plate)."""
    coco = _coco(task)
    name = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append((name[a["category_id"]], a["bbox"]))
    marks, panels, panels_right, checked = dict.fromkeys(PALETTE, 0), 0, 0, 0
    for image_id, objs in by_image.items():
        img = np.asarray(Image.open(task / "train" / "images" / files[image_id]).convert("RGB"), dtype=float)
        for k, (cls, box) in enumerate(objs):
            if cls.startswith("panel_"):
                counts = _palette_counts(img, _border(box))
                panels += 1
                panels_right += bool(counts) and max(counts, key=counts.get) == cls.removeprefix("panel_")
            if not cls.startswith("mark_"):
                continue
            colour = cls.removeprefix("mark_")
            marks[colour] += 1
            hosts = [b for c, b in objs if c == f"panel_{colour}" and _inside(box, b, 18)]
            assert hosts, f"{cls} at {box} is not well inside a panel_{colour}"
            x, y, w, h = box
            r = max(w, h) / 2 + 14
            ring = [(x + w / 2 + r * math.cos(t), y + h / 2 + r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48)]
            near = [(x + w / 2 + (r - 6) * math.cos(t), y + h / 2 + (r - 6) * math.sin(t)) for t in np.linspace(0, 6.2, 48)]
            # objects drawn later (annotations keep the drawing order) may sit on the plate, in
            # any colour: what is not under one is plate
            others = [b for c, b in objs[k + 1:]]
            plate = [q for q in ring + near if not any(_inside((q[0], q[1], 0, 0), b) for b in others)]
            if len(plate) >= 24:  # a plate mostly under larger objects drawn later is not checked
                checked += 1
                coloured = sum(_palette_counts(img, plate).values())
                assert coloured <= 0.1 * len(plate), (cls, box, coloured, len(plate))
    # a panel's border may be hidden in places by later objects: the colour wins nearly always
    assert panels >= 20 and panels_right >= 0.95 * panels, (panels, panels_right)
    assert min(marks.values()) >= 10, marks
    assert checked >= 0.5 * sum(marks.values()), (checked, marks)


def test_a_dot_tells_disc_dot_from_disc(task):
    """At a disc's centre, disc_dot has a dot of another colour; a plain disc does not."""
    coco = _coco(task)
    name = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    seen = {"disc": 0, "disc_dot": 0}
    for a in coco["annotations"]:
        cls = name[a["category_id"]]
        if cls not in seen or a["bbox"][2] < 40:
            continue
        img = np.asarray(Image.open(task / "train" / "images" / files[a["image_id"]]).convert("RGB"), dtype=int)
        x, y, w, h = a["bbox"]
        cx, cy = int(x + w / 2), int(y + h / 2)
        centre = img[cy, cx]
        r = 0.05 * w  # the dot's radius; the area kept clear around it reaches 3 r
        ring = img[cy, cx + math.ceil(r) + 2]
        differs = np.abs(centre - ring).sum() > 0
        assert differs == (cls == "disc_dot"), (cls, a["bbox"], centre, ring)
        seen[cls] += 1
    assert seen["disc"] >= 3 and seen["disc_dot"] >= 3


def test_cli_writes_three_splits_and_refuses_bad_sizes(tmp_path):
    edg = [sys.executable, "-m", "efficientdet_graph"]
    ok = subprocess.run(edg + ["data", "synthetic", "--task", "multiscale", "--out", str(tmp_path / "d"),
                               "--train", "3", "--val", "2", "--test", "2"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        assert len(_coco(tmp_path / "d", split)["images"]) == n
    bad = subprocess.run(edg + ["data", "synthetic", "--task", "multiscale", "--out", str(tmp_path / "e"),
                                "--size", "40"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "4 px" in bad.stderr


def _p3_support(graph: str) -> tuple[int, int]:
    """The columns of the input a P3 class prediction (cell 12, 12) depends on, with the
    reference schedule's model in eval mode (batch norm an affine map): the exact receptive
    field, read from autograd's gradient support."""
    import tempfile

    import torch

    from efficientdet_graph.model import create_model
    from efficientdet_graph.search.reference import Network, Schedule, model_yaml

    s = Schedule()
    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / "model.yaml"
        spec.write_text(model_yaml(Network("x", "", s.repeat, "graph", key="x"), s, 10)
                        .replace("graph: graph.yaml", f"graph: {graph}"))
        model = create_model(str(spec)).eval()
    x = torch.randn(1, 3, s.image_size, s.image_size, requires_grad=True)
    model(x)[0][0][0, :, 12, 12].sum().backward()
    cols = np.nonzero(x.grad[0].abs().sum(dim=(0, 1)).numpy() > 0)[0]
    return int(cols.min()), int(cols.max())


def test_a_no_fusion_p3_prediction_cannot_see_past_a_marks_plate_a_fusing_one_can():
    """The marks' plates hide the panel's colour from what a no-fusion neck's P3 prediction
    sees (docs/tasks.md); every fusing floor network sees the whole image. Cell 12's
    centre is at 100 px; a mark's centre lies within 4 px of its cell's centre."""
    from efficientdet_graph.train import multiscale

    lo, hi = _p3_support("nofusion")
    reach = max(100 - (lo + 0.5), (hi + 0.5) - 100)  # pixel centres, from the cell's centre, the wider side
    # a plate is a square of half side max(w, h) / 2 + margin, and max(w, h) >= sqrt(w * h),
    # the size, which is at least 5 % of the side
    smallest_half = 0.05 * 192 / 2
    assert reach + 4 <= multiscale._PLATE_MARGIN + smallest_half, (lo, hi, multiscale._PLATE_MARGIN)
    for graph in ("fpn", "panet", "bifpn"):
        assert _p3_support(graph) == (0, 191), graph
