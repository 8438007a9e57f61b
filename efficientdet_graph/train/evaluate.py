"""COCO evaluation (pycocotools) and drawing predictions."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch

from .._io import atomic_write_text
from ..model import EfficientDet
from .data import CocoDetection, collate

__all__ = ["predict_dataset", "coco_eval", "class_naming", "evaluate", "draw_detections"]

METRIC_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large")


@torch.no_grad()
def predict_dataset(model: EfficientDet, data: CocoDetection, batch_size: int = 16, device: str = "cpu",
                    score_threshold: float = 0.001, max_detections: int = 100) -> list[dict]:
    """COCO results (original image coordinates, COCO category ids) for every image."""
    model.eval().to(device)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)
    results = []
    for images, targets in loader:
        dets = model.detect(images.to(device), score_threshold=score_threshold, max_detections=max_detections)
        for det, t in zip(dets, targets):
            boxes = det["boxes"].cpu() / t["scale"]
            h, w = t["orig_size"]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            for (x0, y0, x1, y1), s, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist()):
                results.append({"image_id": t["image_id"], "category_id": data.category_ids[label],
                                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                "score": round(s, 5)})
    return results


def coco_eval(annotations: Path, results: list[dict], image_ids: list[int] | None = None) -> dict[str, float]:
    """AP, AP50, AP75, AP small/medium/large (pycocotools), and each class's AP50 as
    ``ap50/<class name>``: which classes a network learns (a context class at chance shows
    there, not in the mean)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = _with_defaults(json.loads(Path(annotations).read_text()))
        gt.createIndex()
        if not results:
            present = {a["category_id"] for a in gt.dataset["annotations"]
                       if image_ids is None or a["image_id"] in set(image_ids)}
            return {**{k: 0.0 for k in METRIC_NAMES},
                    **{f"ap50/{c['name']}": 0.0 for c in gt.dataset.get("categories", []) if c["id"] in present}}
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {k: max(0.0, float(v)) for k, v in zip(METRIC_NAMES, ev.stats[:6])}
    # precision[iou threshold, recall, class, area range, max detections]: IoU 0.5, all
    # areas, 100 detections (a recall never reached holds 0); a class without ground truth
    # on these images holds -1 and is left out
    precision = ev.eval["precision"][0, :, :, 0, -1]
    for k, cat in enumerate(ev.params.catIds):
        if (precision[:, k] > -1).all():
            metrics[f"ap50/{gt.cats[cat]['name']}"] = float(precision[:, k].mean())
    return metrics


def class_naming(annotations: Path, results: list[dict], image_ids: list[int] | None = None, iou: float = 0.5,
                 min_score: float = 0.05) -> dict[str, float]:
    """Per class: ``found/<name>``, the share of its objects that some detection (of any
    class, score >= ``min_score``) covers at IoU >= ``iou``, and ``named/<name>``, the share
    of those found whose best-scoring covering detection has the right class. AP mixes the
    two; a context class that is found but named at chance (1/k among k look-alikes) shows
    here."""
    import numpy as np

    coco = json.loads(Path(annotations).read_text())
    keep = None if image_ids is None else set(image_ids)
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    dets: dict[int, list] = {}
    for r in results:
        if r["score"] >= min_score:
            dets.setdefault(r["image_id"], []).append(r)
    counts = {c: [0, 0, 0] for c in names}  # objects, found, named right
    for a in coco.get("annotations", []):
        if a.get("iscrowd") or (keep is not None and a["image_id"] not in keep) or a["category_id"] not in counts:
            continue
        c = counts[a["category_id"]]
        c[0] += 1
        mine = dets.get(a["image_id"], [])
        if not mine:
            continue
        x, y, w, h = a["bbox"]
        b = np.array([d["bbox"] for d in mine], dtype=float)
        iw = np.clip(np.minimum(x + w, b[:, 0] + b[:, 2]) - np.maximum(x, b[:, 0]), 0, None)
        ih = np.clip(np.minimum(y + h, b[:, 1] + b[:, 3]) - np.maximum(y, b[:, 1]), 0, None)
        inter = iw * ih
        over = inter / (w * h + b[:, 2] * b[:, 3] - inter) >= iou
        if over.any():
            c[1] += 1
            best = max((d for d, o in zip(mine, over) if o), key=lambda d: d["score"])
            c[2] += best["category_id"] == a["category_id"]
    out = {}
    for cat, (n, found, right) in counts.items():
        if n:
            out[f"found/{names[cat]}"] = found / n
            out[f"named/{names[cat]}"] = right / found if found else 0.0
    return out


def _with_defaults(coco: dict) -> dict:
    """The file's annotations with the fields pycocotools needs and a COCO file may
    leave out (``iscrowd`` 0, ``area`` from the box, a ``segmentation``-free entry)."""
    anns = []
    for a in coco.get("annotations") or []:
        a = dict(a)
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            try:
                a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
            except (KeyError, IndexError, TypeError, ValueError):
                a["area"] = 0.0
        anns.append(a)
    return {**coco, "annotations": anns}


def evaluate(model: EfficientDet | str | Path, data: CocoDetection | str | Path, batch_size: int = 16,
             device: str = "cpu", results_path: Path | None = None, split: str = "val") -> dict[str, float]:
    """COCO AP of a model (or checkpoint path) on a data set (or a data folder's ``split``)."""
    if not isinstance(model, EfficientDet):
        from ..model import load_model

        model = load_model(model)
    if not isinstance(data, CocoDetection):
        from .data import resolve_data

        data = CocoDetection(*resolve_data(data, split), model.spec.image_size, train=False)
    results = predict_dataset(model, data, batch_size, device)
    if results_path is not None:
        atomic_write_text(results_path, json.dumps(results))
    ids = [item["id"] for item in data.items]
    return {**coco_eval(data.annotations, results, ids), **class_naming(data.annotations, results, ids)}


def draw_detections(image_path: Path, detections: list[dict], names: dict[int, str], out: Path,
                    score_threshold: float = 0.3) -> Path:
    from PIL import Image, ImageDraw

    with Image.open(image_path) as im:
        canvas = im.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]
    for d in detections:
        if d["score"] < score_threshold:
            continue
        x, y, w, h = d["bbox"]
        color = palette[d["category_id"] % len(palette)]
        draw.rectangle((x, y, x + w, y + h), outline=color, width=2)
        draw.text((x + 2, y + 1), f"{names.get(d['category_id'], d['category_id'])} {d['score']:.2f}", fill=color)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
