"""``box_ap`` against pycocotools itself, on random scenes made to hit its corner cases:
several categories, crowd boxes, detections that overlap several ground truths, tied
scores within and across images, images with no ground truth or no detection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from efficientdet_graph.train.box_ap import box_ap, box_iou_xywh
from efficientdet_graph.train.evaluate import coco_eval


def _scene(seed: int, images: int = 12, cats: int = 3, crowd: float = 0.1, tie: bool = False):
    rng = np.random.default_rng(seed)
    coco = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(cats)]}
    results = []
    for i in range(1, images + 1):
        coco["images"].append({"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"})
        for _ in range(rng.integers(0, 6)):  # some images have no ground truth
            x, y = rng.uniform(0, 70, 2)
            w, h = rng.uniform(4, 30, 2)
            box = [float(x), float(y), float(w), float(h)]
            cat = int(rng.integers(1, cats + 1))
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": cat,
                                        "bbox": box, "area": w * h, "iscrowd": int(rng.random() < crowd)})
            for _ in range(rng.integers(0, 4)):  # jittered copies: true positives, duplicates, near misses
                j = rng.normal(0, rng.choice([0.5, 3.0, 8.0]), 4)
                results.append({"image_id": i, "category_id": cat if rng.random() < 0.8 else int(rng.integers(1, cats + 1)),
                                "bbox": [box[0] + j[0], box[1] + j[1], max(1.0, box[2] + j[2]), max(1.0, box[3] + j[3])],
                                "score": float(rng.choice([0.5, 0.7]) if tie else rng.random())})
        for _ in range(rng.integers(0, 4)):  # background detections
            x, y = rng.uniform(0, 80, 2)
            results.append({"image_id": i, "category_id": int(rng.integers(1, cats + 1)),
                            "bbox": [float(x), float(y), float(rng.uniform(2, 20)), float(rng.uniform(2, 20))],
                            "score": float(rng.choice([0.5, 0.7]) if tie else rng.random())})
    return coco, results


def _ours(coco, results, image_ids):
    gts, dets = {}, {}
    for a in coco["annotations"]:
        gts.setdefault(a["image_id"], []).append(a)
    for r in results:
        dets.setdefault(r["image_id"], []).append(r)
    return box_ap(gts, dets, [c["id"] for c in coco["categories"]], image_ids)


@pytest.mark.parametrize("seed,tie,crowd", [(0, False, 0.0), (1, False, 0.15), (2, True, 0.0), (3, True, 0.2),
                                             (4, False, 0.3), (5, True, 0.1)])
def test_box_ap_equals_pycocotools(tmp_path, seed, tie, crowd):
    coco, results = _scene(seed, crowd=crowd, tie=tie)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    image_ids = [im["id"] for im in coco["images"]][:10]  # a subset of the images, as the proxy scores
    ref = coco_eval(path, [r for r in results if r["image_id"] in image_ids], image_ids)
    got = _ours(coco, results, image_ids)
    for k in ("map", "map50", "map75"):
        assert got[k] == pytest.approx(ref[k], abs=1e-12), (k, got, ref)


def test_more_than_max_dets_detections_per_image_are_cut_as_pycocotools_cuts_them(tmp_path):
    coco, results = _scene(7, images=3, cats=1)
    rng = np.random.default_rng(0)
    results += [{"image_id": 1, "category_id": 1, "score": float(rng.random()),
                 "bbox": [float(rng.uniform(0, 80)), float(rng.uniform(0, 80)), 10.0, 10.0]} for _ in range(150)]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    ref = coco_eval(path, results, [1, 2, 3])
    got = _ours(coco, results, [1, 2, 3])
    assert got["map50"] == pytest.approx(ref["map50"], abs=1e-12) and got["map"] == pytest.approx(ref["map"], abs=1e-12)


def test_iou_by_hand():
    d = np.array([[0.0, 0.0, 10.0, 10.0]])
    g = np.array([[5.0, 5.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 5.0, 5.0], [0.0, 0.0, 20.0, 20.0]])
    # overlap 25 / union 175; identical; disjoint; a crowd box: 100 / the detection's 100
    np.testing.assert_allclose(box_iou_xywh(d, g, np.array([False, False, False, True])), [[25 / 175, 1.0, 0.0, 1.0]])


def test_no_ground_truth_anywhere_is_minus_one_as_pycocotools():
    assert _ours({"annotations": [], "categories": [{"id": 1}]}, [], [1])["map"] == -1.0


def _compare_by_hand(tmp_path, anns, results):
    coco = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "1.png"}],
            "categories": [{"id": 1, "name": "a"}],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": c} for k, (b, c) in enumerate(anns)]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    res = [{"image_id": 1, "category_id": 1, "bbox": b, "score": s} for b, s in results]
    ref, got = coco_eval(path, res, [1]), _ours(coco, res, [1])
    for k in ("map", "map50", "map75"):
        assert got[k] == pytest.approx(ref[k], abs=1e-12), (k, got, ref)
    return got


def test_equal_ious_go_to_the_last_ground_truth(tmp_path):
    # A sits between two boxes at IoU 80/120 each and, as pycocotools, takes the second;
    # B overlaps the second at 0.82 (taken) and the first at 0.33: a false positive.
    # Taking the first instead would leave the second to B: a hit, and AP 1
    got = _compare_by_hand(tmp_path, [([8, 10, 10, 10], 0), ([12, 10, 10, 10], 0)],
                           [([10, 10, 10, 10], 0.9), ([13, 10, 10, 10], 0.8)])
    assert got["map50"] < 0.99


def test_a_plain_ground_truth_wins_over_a_better_overlapping_crowd_box(tmp_path):
    # the detection overlaps the crowd box at 1.0 (inside it) and the plain box at 0.6:
    # it must take the plain one (a hit), not the crowd box (ignored, and a miss left over)
    got = _compare_by_hand(tmp_path, [([0, 0, 40, 40], 1), ([10, 10, 10, 10], 0)],
                           [([10, 10, 10, 6], 0.9)])
    assert got["map50"] == pytest.approx(1.0)
