"""COCO box AP (mAP@[.5:.95], AP50, AP75 over all areas, 100 detections), without pycocotools' loops.

A proxy trial is scored on a few hundred images many times a study, and pycocotools'
per-detection Python loops took about a third of a short trial on the multiscale task
(search/README.md). This computes the same numbers -- the same greedy matching, the
same tie-breaks, the same 101-point interpolated precision -- with the matching of a
detection done for all ten IoU thresholds at once, and detections that overlap no
ground truth at IoU 0.5 skipped. ``tests/test_box_ap.py`` checks it against pycocotools
on random scenes (crowd boxes, duplicates, tied scores, empty images).

What pycocotools does, and so this does too (``cocoeval.py``, ``maskApi.c``):

* per image and category: detections sorted by score (stable), at most ``max_dets``;
  ground truths with ``iscrowd`` set are "ignored" and sorted after the others;
* IoU of boxes; against a crowd box the union is the detection's own area;
* each detection, in score order, takes the ground truth of highest IoU >= the
  threshold (the last one among equals) that is not yet taken -- a crowd box can be
  taken again -- preferring any non-ignored one over an ignored one; a detection that
  takes an ignored box is itself ignored;
* per category, over all images (in image-id order, then score order, stable):
  precision made non-increasing from the right and read at 101 recall points (0 past
  the last recall reached); a category without non-ignored ground truth is left out.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["box_ap", "box_iou_xywh"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def box_iou_xywh(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of [x, y, w, h] boxes; against a crowd box, intersection over the detection's area."""
    d, g = dets[:, None, :], gts[None, :, :]
    w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    da = dets[:, 2] * dets[:, 3]
    ga = gts[:, 2] * gts[:, 3]
    union = np.where(crowd[None, :], da[:, None], da[:, None] + ga[None, :] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _match(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per IoU threshold and detection (already in score order): matched, ignored."""
    t, n_d, n_g = len(IOU_THRESHOLDS), len(dets), len(gts)
    matched = np.zeros((t, n_d), dtype=bool)
    ignored = np.zeros((t, n_d), dtype=bool)
    if n_d == 0 or n_g == 0:
        return matched, ignored
    ious = box_iou_xywh(dets, gts, crowd)
    thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]
    taken = np.zeros((t, n_g), dtype=bool)
    for i in np.flatnonzero(ious.max(axis=1) >= thr[0, 0]):  # the others match nothing at any threshold
        row = ious[i][None, :]
        ok = (~taken | crowd[None, :]) & (row >= thr)
        plain = ok & ~crowd[None, :]
        use = np.where(plain.any(axis=1, keepdims=True), plain, ok)
        found = use.any(axis=1)
        if not found.any():
            continue
        score = np.where(use, row, -1.0)
        best = n_g - 1 - np.argmax(score[:, ::-1], axis=1)  # the last of equal IoUs, as pycocotools' `<`
        rows = np.flatnonzero(found)
        matched[rows, i] = True
        ignored[rows, i] = crowd[best[rows]]
        taken[rows, best[rows]] = True
    return matched, ignored


def box_ap(gts: Mapping[int, Sequence[dict]], dets: Mapping[int, Sequence[dict]], category_ids: Sequence[int],
           image_ids: Sequence[int], max_dets: int = 100) -> dict[str, float]:
    """``map``, ``map50``, ``map75`` as pycocotools' ``COCOeval(..., "bbox")`` summarizes
    them (area all, ``max_dets`` detections); -1 where no category has ground truth.

    ``gts``: image id -> annotations (``bbox`` [x, y, w, h], ``category_id``, optional
    ``iscrowd``); ``dets``: image id -> results (``bbox``, ``category_id``, ``score``);
    ``category_ids``: the categories evaluated; ``image_ids``: the images evaluated.
    """
    images = sorted(set(image_ids))
    per_cat: list[np.ndarray] = []  # (T, R) precision of each category with ground truth
    for cat in sorted(set(category_ids)):
        scores, matches, ignores = [], [], []
        n_plain = 0
        for img in images:
            g = [a for a in gts.get(img, ()) if a["category_id"] == cat]
            d = [r for r in dets.get(img, ()) if r["category_id"] == cat]
            if not g and not d:
                continue
            crowd = np.array([bool(a.get("iscrowd", 0)) for a in g], dtype=bool)
            order_g = np.argsort(crowd, kind="mergesort")
            crowd = crowd[order_g]
            gboxes = np.array([g[j]["bbox"] for j in order_g], dtype=np.float64).reshape(-1, 4)
            s = np.array([r["score"] for r in d], dtype=np.float64)
            order_d = np.argsort(-s, kind="mergesort")[:max_dets]
            dboxes = np.array([d[j]["bbox"] for j in order_d], dtype=np.float64).reshape(-1, 4)
            m, ig = _match(dboxes, gboxes, crowd)
            scores.append(s[order_d])
            matches.append(m)
            ignores.append(ig)
            n_plain += int((~crowd).sum())
        if n_plain == 0:
            continue  # pycocotools' -1: left out of the mean
        s = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-s, kind="mergesort")
        m = np.concatenate(matches, axis=1)[:, order] if matches else np.zeros((len(IOU_THRESHOLDS), 0), bool)
        ig = np.concatenate(ignores, axis=1)[:, order] if ignores else np.zeros_like(m)
        tp = np.cumsum(m & ~ig, axis=1, dtype=np.float64)
        fp = np.cumsum(~m & ~ig, axis=1, dtype=np.float64)
        precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
        for t in range(len(IOU_THRESHOLDS)):
            if tp.shape[1] == 0:
                continue
            rc = tp[t] / n_plain
            pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1]  # non-increasing from the right
            idx = np.searchsorted(rc, RECALL_POINTS, side="left")
            inside = idx < len(pr)
            precision[t, inside] = pr[idx[inside]]
        per_cat.append(precision)
    if not per_cat:
        return {"map": -1.0, "map50": -1.0, "map75": -1.0}
    p = np.stack(per_cat)  # (K, T, R)
    return {"map": float(p.mean()), "map50": float(p[:, 0].mean()), "map75": float(p[:, 5].mean())}
