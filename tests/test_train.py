"""Training end to end: data checks, loss, the loop, resume after a kill, divergence,
evaluation, DDP. All on the built-in synthetic data, with the `micro` spec."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from efficientdet_graph.model import Anchors
from efficientdet_graph.model.checkpoint import read_checkpoint
from efficientdet_graph.train import (
    CocoDetection,
    DataError,
    DetectionLoss,
    LossConfig,
    TrainConfig,
    make_synthetic,
    match_anchors,
    train,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", num_train=48, num_val=16, image_size=64, seed=3)


def edg_cmd():
    return [str(Path(sys.executable).parent / "edg")]


def test_synthetic_is_deterministic(tmp_path):
    a = make_synthetic(tmp_path / "a", 6, 2, 64, 3, seed=7)
    b = make_synthetic(tmp_path / "b", 6, 2, 64, 3, seed=7)
    assert (a / "train/annotations.json").read_text() == (b / "train/annotations.json").read_text()
    assert (a / "train/images/000003.png").read_bytes() == (b / "train/images/000003.png").read_bytes()
    ann = json.loads((a / "train/annotations.json").read_text())
    assert ann["annotations"] and all(0 <= x["bbox"][0] and x["bbox"][0] + x["bbox"][2] <= 64 for x in ann["annotations"])


def _coco(tmp_path, images, annotations, write_images=True):
    (tmp_path / "images").mkdir(exist_ok=True)
    if write_images:
        from PIL import Image

        for im in images:
            Image.new("RGB", (im["width"], im["height"]), (90, 90, 90)).save(tmp_path / "images" / im["file_name"])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}))
    return path


def test_bad_data_is_reported_and_skipped(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 30} for i in (1, 2, 3)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]},   # fine
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [35, 20, 20, 20]},  # partly outside: clipped
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [100, 100, 5, 5]},  # outside: dropped
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [3, 3, 0, 8]},      # degenerate: dropped
        {"id": 5, "image_id": 2, "category_id": 7, "bbox": [3, 3, 5, 8]},      # unknown category
    ]
    ann = _coco(tmp_path, images, anns)
    (tmp_path / "images" / "3.png").write_bytes(b"\x89PNG garbage")  # corrupt image
    data = CocoDetection(ann, tmp_path / "images", 64, train=False)
    r = data.report
    assert (r.images, r.boxes, r.clipped_boxes, r.dropped_outside, r.dropped_degenerate, r.unknown_category) == (2, 2, 1, 1, 1, 1)
    assert r.skipped_images == ["3.png"]
    assert "skipped 1 unreadable image(s) (3.png)" in str(r)
    assert data.items[0]["boxes"][1] == [35.0, 20.0, 40.0, 30.0]


def test_empty_or_broken_annotation_files(tmp_path):
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(DataError, match="empty"):
        CocoDetection(tmp_path / "empty.json", tmp_path, 64, train=False)
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(DataError, match="not valid JSON"):
        CocoDetection(tmp_path / "broken.json", tmp_path, 64, train=False)
    ann = _coco(tmp_path, [{"id": 1, "file_name": "x.png", "width": 4, "height": 4}], [], write_images=False)
    with pytest.raises(DataError, match="no usable images"):
        CocoDetection(ann, tmp_path / "images", 64, train=False)


def test_augmented_boxes_stay_on_their_objects(data):
    ds = CocoDetection(data / "train/annotations.json", data / "train/images", 64, train=True)
    for i in range(8):
        image, t = ds[i, 1234 + i]
        assert image.shape == (3, 64, 64)
        b = t["boxes"]
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all() and (b >= 0).all() and (b <= 64).all()
        again, t2 = ds[i, 1234 + i]
        assert torch.equal(image, again) and torch.equal(b, t2["boxes"])  # seeded augmentation


def test_matching_thresholds():
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 12], [0, 0, 10, 20], [50, 50, 60, 60.0]])
    boxes = torch.tensor([[0, 0, 10, 10.0]])
    match, iou = match_anchors(anchors, boxes, LossConfig())
    # IoUs 1.0, 0.833, 0.5, 0 -> positive, positive, positive (>= 0.5), negative
    assert match.tolist() == [0, 0, 0, -1]
    anchors = torch.tensor([[0, 0, 10, 22.0], [0, 0, 10, 40.0]])  # IoU 0.4545 (ignored band), 0.25
    match, _ = match_anchors(anchors, boxes, LossConfig(positive_iou=0.5, negative_iou=0.4))
    assert match.tolist() == [0, -1]  # the best anchor is forced positive even below 0.5


def test_loss_against_hand_computation():
    anchors = Anchors([3], 1.0, 1, [(1.0, 1.0)])  # 8x8 anchors on a stride-8 grid: no overlaps
    loss = DetectionLoss(anchors, num_classes=2)
    cls = [torch.zeros(1, 2, 2, 2)]  # logits 0 -> p = 0.5 everywhere; 4 anchors (2x2 grid, stride 8)
    box = [torch.zeros(1, 4, 2, 2)]
    a = anchors.boxes([(2, 2)])
    target = [{"boxes": a[:1].clone(), "labels": torch.tensor([1])}]  # exactly anchor 0
    out = loss(cls, box, target)
    # focal at p=0.5: positive class term alpha*0.5^1.5*log2, negatives (1-alpha)*0.5^1.5*log2
    import math

    pos = 0.25 * 0.5**1.5 * math.log(2)
    neg = 0.75 * 0.5**1.5 * math.log(2)
    # anchor 0: one positive entry + one negative entry; anchors 1-3 (IoU 0 with the box): 2 negatives each
    assert out["cls"].item() == pytest.approx(pos + neg + 6 * neg, rel=1e-5)
    assert out["box"].item() == pytest.approx(0.0, abs=1e-7)  # codes of an exact match are 0
    assert out["positives"].item() == 1


def micro_cfg(data, out, **kw):
    return TrainConfig(model="micro", data=str(data), out=str(out), batch_size=8, quiet=True, log_every=1,
                       lr=3e-3, **kw)


def test_tiny_model_loss_falls(data, tmp_path):
    summary = train(micro_cfg(data, tmp_path / "run", epochs=6, eval_every=6))
    steps = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if r["type"] == "step"]
    assert len(losses) == 36 == summary["step"]
    assert sum(losses[-6:]) / 6 < 0.85 * sum(losses[:6]) / 6
    assert (tmp_path / "run/curves.png").stat().st_size > 5000
    assert "map50" in summary
    ckpt = read_checkpoint(tmp_path / "run/last.pt")
    assert ckpt["train_state"]["step"] == 36 and ckpt["train_state"]["epoch"] == 6


def test_seed_makes_cpu_runs_repeatable(data, tmp_path):
    a = train(micro_cfg(data, tmp_path / "a", epochs=1, max_steps=3, eval_every=99))
    b = train(micro_cfg(data, tmp_path / "b", epochs=1, max_steps=3, eval_every=99))
    la = (tmp_path / "a/metrics.jsonl").read_text()
    assert a["step"] == b["step"] == 3
    timing = ("img_per_s", "data_wait")
    strip = lambda text: [{k: v for k, v in json.loads(x).items() if k not in timing} for x in text.splitlines()]  # noqa: E731
    assert strip(la) == strip((tmp_path / "b/metrics.jsonl").read_text())


def test_kill_and_resume_loses_no_epoch(data, tmp_path):
    args = ["train", "micro", "--data", str(data), "--batch-size", "8", "--lr", "3e-3", "--epochs", "3",
            "--eval-every", "99", "--log-every", "1", "--quiet"]
    whole = subprocess.run(edg_cmd() + args + ["--out", str(tmp_path / "whole")], capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen(edg_cmd() + args + ["--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed/last.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_checkpoint(ckpt)["train_state"]["epoch"] < 3
    resumed = subprocess.run(edg_cmd() + args + ["--out", str(tmp_path / "killed"), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = read_checkpoint(tmp_path / "whole/last.pt")["train_state"]
    b = read_checkpoint(ckpt)["train_state"]
    assert a["step"] == b["step"] == 18 and b["epoch"] == 3
    # deterministic data order and augmentation: the resumed run ends where the whole one did
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-5), k
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 18  # no duplicated or missing log lines


def test_non_finite_loss_stops_and_keeps_the_checkpoint(data, tmp_path):
    cfg = micro_cfg(data, tmp_path / "run", epochs=1, eval_every=99)
    train(TrainConfig(**{**cfg.__dict__, "optimizer": "sgd", "lr": 0.01}))
    before = (tmp_path / "run/last.pt").read_bytes()
    r = subprocess.run(edg_cmd() + ["train", "micro", "--data", str(data), "--out", str(tmp_path / "run"),
                                    "--batch-size", "8", "--epochs", "3", "--lr", "1e30",
                                    "--optimizer", "sgd", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "the loss became" in r.stderr and "last good checkpoint" in r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "run/last.pt").read_bytes() == before
    r = subprocess.run(edg_cmd() + ["train", "micro", "--data", str(data), "--out", str(tmp_path / "run"),
                                    "--batch-size", "8", "--epochs", "3", "--resume", "--optimizer", "adamw"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "trained with --optimizer sgd" in r.stderr and "Traceback" not in r.stderr


def test_eval_and_predict_cli(data, tmp_path):
    train(micro_cfg(data, tmp_path / "run", epochs=1, eval_every=99))
    res = tmp_path / "preds.json"
    r = subprocess.run(edg_cmd() + ["eval", str(tmp_path / "run/last.pt"), "--data", str(data), "--json",
                                    "--results", str(res)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    main = {"map", "map50", "map75", "map_small", "map_medium", "map_large"}
    classes = {k.split("/", 1)[1] for k in metrics if "/" in k}
    assert main <= set(metrics) and classes  # and per class: AP50, found, named right
    assert set(metrics) == main | {f"{kind}/{c}" for kind in ("ap50", "found", "named") for c in classes}
    text = subprocess.run(edg_cmd() + ["eval", str(tmp_path / "run/last.pt"), "--data", str(data)],
                          capture_output=True, text=True, timeout=300)
    assert text.returncode == 0 and "named right" in text.stdout, text.stderr
    preds = json.loads(res.read_text())
    assert preds and {"image_id", "category_id", "bbox", "score"} <= set(preds[0])
    r = subprocess.run(edg_cmd() + ["predict", str(tmp_path / "run/last.pt"), str(data / "val/images/000000.png"),
                                    "-o", str(tmp_path / "pred"), "--score", "0.0"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pred/000000_pred.png").stat().st_size > 1000


def test_ddp_two_processes_match_one(data, tmp_path):
    """Two gloo processes (global batch 8 = 2 x 4) follow the one-process loss curve
    (batch 8). BN is frozen: batch statistics would differ between 4 and 8 images;
    positives are counted across processes, so the losses are the same sums."""
    torchrun = Path(sys.executable).parent / "torchrun"
    common = ["train", "micro", "--data", str(data), "--batch-size", "8", "--lr", "3e-3", "--epochs", "1",
              "--max-steps", "4", "--eval-every", "99", "--log-every", "1", "--freeze-bn", "--quiet"]
    one = subprocess.run(edg_cmd() + common + ["--out", str(tmp_path / "one")], capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "efficientdet_graph"]
                         + common + ["--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=300,
                         env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    read = lambda p: [json.loads(x)["loss"] for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = read(tmp_path / "one"), read(tmp_path / "two")
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * abs(x)  # stated tolerance: 1e-4 relative (float reduction order)


def test_train_cli_on_a_missing_folder(tmp_path):
    r = subprocess.run(edg_cmd() + ["train", "micro", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no annotations" in r.stderr and "Traceback" not in r.stderr
