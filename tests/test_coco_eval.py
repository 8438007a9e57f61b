"""coco_eval against pycocotools' own definition: the ground truth given back as
predictions scores AP 1.0; moved, missing or mislabelled boxes score less."""

import json

import pytest

from efficientdet_graph.train import make_synthetic
from efficientdet_graph.train.evaluate import coco_eval


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    out = make_synthetic(tmp_path_factory.mktemp("coco"), num_train=1, num_val=24, image_size=96, num_classes=3)
    path = out / "val" / "annotations.json"
    return path, json.loads(path.read_text())


def _as_predictions(anns, score=1.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
            for a in anns]


def test_ground_truth_as_predictions_scores_ap_1(gt):
    path, data = gt
    assert len(data["annotations"]) >= 24
    m = coco_eval(path, _as_predictions(data["annotations"]), [im["id"] for im in data["images"]])
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0) and m["map75"] == pytest.approx(1.0)
    for size in ("map_small", "map_medium", "map_large"):  # 1.0 where the bucket has objects, 0 where empty
        assert m[size] == pytest.approx(1.0) or m[size] == 0.0


def test_missing_and_moved_boxes_score_less(gt):
    path, data = gt
    anns = data["annotations"]
    half = coco_eval(path, _as_predictions(anns[::2]))
    assert 0.3 < half["map"] < 0.7
    moved = [dict(p, bbox=[p["bbox"][0] + p["bbox"][2] * 0.3, p["bbox"][1], p["bbox"][2], p["bbox"][3]])
             for p in _as_predictions(anns)]  # IoU 0.54: counts at 0.5, not at 0.75
    m = coco_eval(path, moved)
    assert m["map50"] == pytest.approx(1.0) and m["map75"] == 0.0
    wrong = [dict(p, category_id=p["category_id"] % 3 + 1) for p in _as_predictions(anns)]
    assert coco_eval(path, wrong)["map"] < 0.5


def test_no_predictions_score_zero(gt):
    path, _ = gt
    assert coco_eval(path, [])["map"] == 0.0


def test_per_class_ap50_against_a_hand_computed_example(tmp_path):
    """Two images, classes a, b, c (c has no object). Class a: both objects found, AP 1.
    Class b: its one object found by the second-best of two detections (a false positive
    scores higher): precision 1/2 at recall 1, so every one of the 101 recall points
    interpolates to 0.5 -- AP50 0.5."""
    box = [10.0, 10.0, 20.0, 20.0]
    coco = {"images": [{"id": 1, "width": 64, "height": 64}, {"id": 2, "width": 64, "height": 64}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": box},
                            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [30.0, 30.0, 20.0, 20.0]}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    preds = [{"image_id": 1, "category_id": 1, "bbox": box, "score": 0.9},
             {"image_id": 2, "category_id": 1, "bbox": box, "score": 0.8},
             {"image_id": 1, "category_id": 2, "bbox": box, "score": 0.9},  # no b on image 1
             {"image_id": 2, "category_id": 2, "bbox": [30.0, 30.0, 20.0, 20.0], "score": 0.7}]
    m = coco_eval(path, preds)
    assert m["ap50/a"] == pytest.approx(1.0) and m["ap50/b"] == pytest.approx(0.5)
    assert "ap50/c" not in m  # no ground truth: no AP, rather than a made-up 0
    assert m["map50"] == pytest.approx(0.75)
    assert coco_eval(path, []) == {**dict.fromkeys(("map", "map50", "map75", "map_small", "map_medium", "map_large"),
                                                   0.0), "ap50/a": 0.0, "ap50/b": 0.0}


def test_class_naming_against_a_hand_computed_example(tmp_path):
    """Object a1 is covered by a b detection (0.9) and an a detection (0.5): found, named
    wrong. Object b1 is covered by a b detection: found, named right. Object a2 has only a
    detection at IoU 1/3 (< 0.5) and one below the score floor: not found."""
    from efficientdet_graph.train.evaluate import class_naming

    coco = {"images": [{"id": 1, "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10]},
                            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10]}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    preds = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.9},
             {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5},
             {"image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "score": 0.7},
             {"image_id": 1, "category_id": 1, "bbox": [25, 20, 10, 10], "score": 0.9},   # IoU 50/150
             {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "score": 0.01}]  # below 0.05
    got = class_naming(path, preds)
    assert got == {"found/a": 0.5, "named/a": 0.0, "found/b": 1.0, "named/b": 1.0}
