"""The fast training step keeps its meaning: the loss with the positives counted once from a
batched matching equals a hand-written per-image reference (torchvision's IoU and focal
loss); the in-place focal gradient equals autograd's through torchvision's; DataLoader
workers give the very batches, augmentations and weights of loading in the main process;
an image that breaks under a worker is a DataError, not a worker traceback."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import box_iou, sigmoid_focal_loss
from torchvision.transforms.v2 import functional as TF

from efficientdet_graph.errors import ConfigError
from efficientdet_graph.model import Anchors
from efficientdet_graph.model.checkpoint import read_checkpoint
from efficientdet_graph.train import (CocoDetection, DataError, DetectionLoss, LossConfig, TrainConfig, collate,
                                      make_synthetic, match_anchors, train)
from efficientdet_graph.train.data import EpochBatches, _read_rgb, make_loader, seeded_order
from efficientdet_graph.train.targets import focal_loss_sum, match_anchors_batch


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", num_train=32, num_val=8, image_size=64, seed=5)


def random_boxes(g: torch.Generator, n: int, size: float) -> torch.Tensor:
    wh = (0.05 + 0.6 * torch.rand(n, 2, generator=g)) * size
    xy = torch.rand(n, 2, generator=g) * (size - wh)
    return torch.cat([xy, xy + wh], 1)


def test_batched_matching_equals_per_image_matching():
    anchors = Anchors([3, 4, 5], 4.0, 3, [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)]).boxes([(16, 16), (8, 8), (4, 4)])
    g = torch.Generator().manual_seed(0)
    cfg = LossConfig()
    for trial in range(20):
        counts = [int(torch.randint(0, 7, (), generator=g)) for _ in range(4)]
        counts[trial % 4] = 0  # always an empty image in the batch, at every position
        boxes = [random_boxes(g, n, 128.0) for n in counts]
        batched = match_anchors_batch(anchors, boxes, cfg)
        for i, b in enumerate(boxes):
            assert torch.equal(batched[i], match_anchors(anchors, b, cfg)[0]), (trial, i)
    assert torch.equal(match_anchors_batch(anchors, [torch.zeros(0, 4)] * 2, cfg),
                       torch.full((2, anchors.shape[0]), -1))


def reference_loss(cls_out, box_out, targets, anchors, num_classes, cfg=LossConfig()):
    """The loss written out by hand, one image at a time: IoU thresholds and forced best
    anchors, torchvision's focal loss, Huber on TF's (ty, tx, th, tw) codes."""
    b = cls_out[0].shape[0]
    cls = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, num_classes) for x in cls_out], 1)
    box = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, 4) for x in box_out], 1)
    cls_sum, box_sum, positives = 0.0, 0.0, 0
    for i, t in enumerate(targets):
        gt, labels = t["boxes"], t["labels"]
        match = torch.full((anchors.shape[0],), -1)
        if len(gt):
            iou = box_iou(anchors, gt)
            best, idx = iou.max(1)
            for a in range(anchors.shape[0]):
                match[a] = idx[a] if best[a] >= 0.5 else (-2 if best[a] >= 0.4 else -1)
            for j, a in enumerate(iou.argmax(0).tolist()):
                match[a] = j
        one_hot = torch.zeros(anchors.shape[0], num_classes)
        for a in range(anchors.shape[0]):
            if match[a] >= 0:
                one_hot[a, labels[match[a]]] = 1.0
        focal = sigmoid_focal_loss(cls[i], one_hot, alpha=cfg.alpha, gamma=cfg.gamma, reduction="none")
        cls_sum = cls_sum + focal[match != -2].sum()
        pos = match >= 0
        positives += int(pos.sum())
        if pos.any():
            g, a = gt[match[pos]], anchors[pos]
            aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
            gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
            codes = torch.stack([((g[:, 1] + gh / 2) - (a[:, 1] + ah / 2)) / ah,
                                 ((g[:, 0] + gw / 2) - (a[:, 0] + aw / 2)) / aw,
                                 torch.log(gh / ah), torch.log(gw / aw)], 1)
            box_sum = box_sum + F.huber_loss(box[i][pos], codes, delta=cfg.huber_delta, reduction="sum") / 4
    n = max(positives, 1)
    return cls_sum / n + cfg.box_weight * box_sum / n, positives


def test_loss_with_positives_counted_once_equals_the_reference():
    anchors = Anchors([3, 4], 4.0, 2, [(1.0, 1.0), (1.4, 0.7)])
    sizes, num_classes = [(8, 8), (4, 4)], 5
    g = torch.Generator().manual_seed(1)
    cls_out = [torch.randn(3, 4 * num_classes, h, w, generator=g).requires_grad_() for h, w in sizes]
    box_out = [(0.3 * torch.randn(3, 16, h, w, generator=g)).requires_grad_() for h, w in sizes]
    targets = [{"boxes": random_boxes(g, n, 64.0), "labels": torch.randint(0, num_classes, (n,), generator=g)}
               for n in (3, 0, 5)]
    loss_fn = DetectionLoss(anchors, num_classes)
    assignment = loss_fn.assign(targets, sizes, image_size=(64, 64))
    ours = loss_fn(cls_out, box_out, assignment=assignment)
    ref, positives = reference_loss(cls_out, box_out, targets, anchors.boxes(sizes, image_size=(64, 64)), num_classes)
    assert positives > 0 and assignment.positives.item() == positives == ours["positives"].item()
    assert ours["loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    grads = torch.autograd.grad(ours["loss"], cls_out + box_out)
    ref_grads = torch.autograd.grad(ref, cls_out + box_out)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    # normalised by the positives of all processes when given (DDP)
    scaled = loss_fn(cls_out, box_out, assignment=assignment, positives_total=torch.tensor(4.0 * positives),
                     world_size=2)
    assert scaled["loss"].item() == pytest.approx(ours["loss"].item() / 2, rel=1e-5)


@pytest.mark.parametrize("gamma", [1.5, 2.0, 1.3])
def test_focal_sum_and_its_gradient_equal_torchvision(gamma):
    g = torch.Generator().manual_seed(2)
    x = (6 * torch.randn(2, 300, 6, generator=g, dtype=torch.float64))
    x[0, :5] = 40.0  # confident and right or wrong: the loss stays finite and equal
    x[1, :5] = -40.0
    target = torch.rand(2, 300, 6, generator=g) < 0.05
    target[0, :5, 0] = target[1, :5, 0] = True
    weight = (torch.rand(2, 300, 1, generator=g) < 0.8).double()
    weight[target.any(-1, keepdim=True)] = 1.0  # positives are never ignored
    xr = x.clone().requires_grad_()
    ref = (sigmoid_focal_loss(xr, target.double(), alpha=0.25, gamma=gamma, reduction="none") * weight).sum()
    ref.backward()
    xo = x.clone().requires_grad_()
    ours = focal_loss_sum(xo, target.reshape(-1).nonzero().squeeze(1), weight, 0.25, gamma)
    ours.backward()
    assert torch.isfinite(ours) and ours.item() == pytest.approx(ref.item(), rel=1e-9)
    assert torch.allclose(xo.grad, xr.grad, rtol=1e-9, atol=1e-12)


def test_loader_gives_the_seeded_batches_with_and_without_workers(data):
    ds = CocoDetection(data / "train/annotations.json", data / "train/images", 64, train=True)
    seed, epoch, bs = 4, 1, 8
    order = seeded_order(len(ds), seed, epoch)
    expected = [collate([ds[j, seed * 7_919_993 + epoch * 100_003 + j] for j in order[i * bs:(i + 1) * bs]])
                for i in range(1, len(ds) // bs)]  # from batch 1: a run resumed after its first step
    for workers in (0, 2):
        batches = EpochBatches(len(ds), bs, seed)
        batches.set_epoch(epoch, start=1)
        got = list(make_loader(ds, batches, workers))
        assert len(got) == len(expected) == len(batches)
        for (images, targets), (images_e, targets_e) in zip(got, expected):
            assert torch.equal(images, images_e)
            for t, e in zip(targets, targets_e):
                assert torch.equal(t["boxes"], e["boxes"]) and torch.equal(t["labels"], e["labels"])


def test_a_run_with_workers_equals_one_without(data, tmp_path):
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        train(TrainConfig(model="micro", data=str(data), out=str(out), batch_size=8, epochs=2, max_steps=6,
                          eval_every=99, log_every=1, lr=3e-3, quiet=True, workers=workers))
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(0.0 <= r["data_wait"] <= 1.0 for r in lines if r["type"] == "step")
        runs[workers] = ([{k: v for k, v in r.items() if k not in ("img_per_s", "data_wait")} for r in lines],
                         read_checkpoint(out / "last.pt")["train_state"]["model"])
    assert len(runs[0][0]) >= 6 and runs[0][0] == runs[2][0]  # the same loss curve, to the last digit
    for k, v in runs[0][1].items():
        assert torch.equal(v, runs[2][1][k]), k


def test_an_image_broken_under_a_worker_is_a_data_error(data, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(data / "train", root)
    ds = CocoDetection(root / "annotations.json", root / "images", 64, train=True)
    victim = ds.items[0]["path"]
    victim.write_bytes(b"not an image any more")
    batches = EpochBatches(len(ds), len(ds), 0)
    with pytest.raises(DataError) as err:
        list(make_loader(ds, batches, 2))
    assert str(victim) in str(err.value) and "unreadable" in str(err.value)
    assert "Traceback" not in str(err.value) and "worker" not in str(err.value)


class _KillsItsWorker(torch.utils.data.Dataset):
    """Sample 3 kills the process loading it, as the out-of-memory killer would."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, key):  # (index, augmentation seed), as EpochBatches gives it
        import os
        import signal

        if key[0] == 3 and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.zeros(3, 4, 4), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}


def test_a_killed_loader_worker_stops_the_others_and_cannot_raise_again_later():
    """After a worker is killed, the loader (persistent workers, still referenced, as the
    training loop holds it) stops its other workers and unregisters them: torch's SIGCHLD
    handler raises for any registered worker that died, at whatever line the process is on
    when the next child exits, so a child ending afterwards -- here `true` -- must not raise."""
    import multiprocessing
    import subprocess

    loader = make_loader(_KillsItsWorker(), EpochBatches(8, 1, 0), 2)
    with pytest.raises(RuntimeError) as err:
        list(loader)
    assert "DataLoader worker (pid" in str(err.value)  # torch's words, or ours in torch's words
    assert multiprocessing.active_children() == []  # the surviving worker was stopped, not leaked
    subprocess.run(["true"], check=True)  # its SIGCHLD runs torch's handler
    for _ in range(100):  # the handler runs between bytecodes: give it some
        sum(range(100))


def test_pil_decodes_what_torchvision_does_not(tmp_path):
    g = torch.Generator().manual_seed(3)
    rgb = torch.randint(0, 256, (12, 10, 3), generator=g, dtype=torch.uint8).numpy()
    for name, image in (("a.bmp", Image.fromarray(rgb)), ("b.png", Image.fromarray(rgb)),
                        ("c.png", Image.fromarray(rgb[..., 0], "L")),
                        ("d.png", Image.fromarray(rgb[..., 0].astype("uint16") * 200))):
        image.save(tmp_path / name)
        with Image.open(tmp_path / name) as im:
            expected = TF.pil_to_tensor(im.convert("RGB"))
        assert torch.equal(_read_rgb(tmp_path / name), expected), name
    (tmp_path / "e.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="e.png"):
        _read_rgb(tmp_path / "e.png")


def test_cli_workers_flag(data, tmp_path, capsys):
    from efficientdet_graph.cli.main import main

    common = ["train", "micro", "--data", str(data), "--batch-size", "8", "--epochs", "1", "--eval-every", "99",
              "--quiet", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_:
        main(common + ["--workers", "-1"])
    assert exit_.value.code == 2 and "--workers" in capsys.readouterr().err
    assert main(common + ["--workers", "0", "--max-steps", "1"]) == 0
    with pytest.raises(ConfigError, match="workers must be >= 0"):
        train(TrainConfig(model="micro", data=str(data), out=str(tmp_path / "api"), workers=-1, quiet=True))
