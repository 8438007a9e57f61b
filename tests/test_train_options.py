"""Training options a run file sets: augmentation, mixed precision, class names."""

import json

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from efficientdet_graph.errors import ConfigError
from efficientdet_graph.model.checkpoint import read_checkpoint
from efficientdet_graph.train import Augment, CocoDetection, DataError, TrainConfig, make_synthetic, resolve_data, train
from efficientdet_graph.train.data import MEAN, STD
from efficientdet_graph.train.loop import AMP_MODES, amp_mode


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", num_train=16, num_val=0, image_size=64, seed=5)


def _reference_sample(item, seed, size=64):
    """The training pipeline as it was before augmentation became configurable, by hand."""
    with Image.open(item["path"]) as im:
        image = TF.pil_to_tensor(im.convert("RGB"))
    h, w = item["size"]
    boxes = tv_tensors.BoundingBoxes(torch.tensor(item["boxes"]).reshape(-1, 4), format="XYXY", canvas_size=(h, w))
    pipeline = v2.Compose([v2.RandomHorizontalFlip(0.5),
                           v2.ScaleJitter((size, size), scale_range=(0.5, 1.5), antialias=True),
                           v2.RandomCrop((size, size), pad_if_needed=True), v2.SanitizeBoundingBoxes(min_size=1.0)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image, target = pipeline(image, {"boxes": boxes, "labels": torch.tensor(item["labels"])})
    return TF.normalize(TF.to_dtype(image, torch.float32, scale=True), MEAN, STD), target


def test_default_augmentation_draws_the_same_samples_as_before(data):
    assert TrainConfig().augment == Augment()
    ds = CocoDetection(*resolve_data(data, "train"), 64, train=True)  # the default, as the loop's default passes it
    configured = CocoDetection(*resolve_data(data, "train"), 64, train=True, augment=TrainConfig().augment)
    flipped = 0
    for i in range(len(ds)):
        seed = 1234 + i
        want_image, want = _reference_sample(ds.items[i], seed)
        for got_image, got in (ds[i, seed], configured[i, seed]):
            assert torch.equal(got_image, want_image)
            assert torch.equal(got["boxes"], want["boxes"].as_subclass(torch.Tensor).float())
            assert torch.equal(got["labels"], want["labels"])
        flipped += not torch.equal(ds[i, seed][0], ds[i, seed + 1][0])
    assert flipped  # the seed matters: the samples are random


def test_augmentation_settings_take_effect(data):
    ann, img = resolve_data(data, "train")
    # scale 1 on 64 px images at 64 px: no resize, no crop; only the flip differs
    plain = CocoDetection(ann, img, 64, train=True, augment=Augment(hflip=0.0, scale=(1.0, 1.0)))
    mirror = CocoDetection(ann, img, 64, train=True, augment=Augment(hflip=1.0, scale=(1.0, 1.0)))
    evaluation = CocoDetection(ann, img, 64, train=False)
    for i in range(4):
        image, target = plain[i, i]
        assert torch.equal(image, evaluation[i][0]) and torch.equal(target["boxes"], evaluation[i][1]["boxes"])
        m_image, m_target = mirror[i, i]
        assert torch.equal(m_image, image.flip(-1))
        x0, y0, x1, y1 = target["boxes"].unbind(-1)
        assert torch.allclose(m_target["boxes"], torch.stack([64 - x1, y0, 64 - x0, y1], -1))
    # none: no randomness at all, each image letterboxed as for evaluation (here at 48 px)
    none = CocoDetection(ann, img, 48, train=True, augment=None)
    evaluation = CocoDetection(ann, img, 48, train=False)
    for i in range(4):
        assert torch.equal(none[i, 1][0], none[i, 2][0]) and torch.equal(none[i, 1][0], evaluation[i][0])
        assert torch.equal(none[i, 1][1]["boxes"], evaluation[i][1]["boxes"])
    with pytest.raises(ValueError, match="lo <= hi"):
        Augment(scale=(1.5, 0.5))


def _first_losses(data, out, **kw):
    train(TrainConfig(model="micro", data=str(data), out=str(out), batch_size=8, lr=3e-3, quiet=True, log_every=1,
                      epochs=1, max_steps=2, device="cpu", **kw))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["type"] == "step"]


def test_amp_on_the_cpu(data, tmp_path):
    full = _first_losses(data, tmp_path / "off", amp="off")
    assert full == _first_losses(data, tmp_path / "auto", amp="auto")  # auto on a CPU: full precision
    for mode in ("bf16", "fp16"):
        mixed = _first_losses(data, tmp_path / mode, amp=mode)
        assert len(mixed) == 2 and all(torch.isfinite(torch.tensor(mixed)))
        assert mixed[0] != full[0]                               # the forward pass did run in low precision
        assert mixed[0] == pytest.approx(full[0], rel=0.05)      # and computed the same loss, roughly
        assert read_checkpoint(tmp_path / mode / "last.pt")["train_state"]["config"]["amp"] == mode


def test_amp_modes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_mode("auto", cpu) is None and amp_mode("off", cpu) is None and amp_mode("off", cuda) is None
    assert amp_mode("bf16", cpu) is torch.bfloat16 and amp_mode("fp16", cpu) is torch.float16
    with pytest.raises(ConfigError, match="--amp must be one of auto, off, bf16, fp16"):
        amp_mode("fp8", cpu)
    with pytest.raises(ConfigError, match="mixed precision is supported on CUDA and CPU"):
        amp_mode("bf16", torch.device("meta"))
    from efficientdet_graph.cli import train_commands

    assert train_commands.AMP_MODES == AMP_MODES  # the CLI's copy (kept so --help needs no torch)


def test_class_names_name_the_categories(data, tmp_path):
    train(TrainConfig(model="micro", data=str(data), out=str(tmp_path / "a"), batch_size=8, quiet=True, epochs=1,
                      max_steps=1, class_names=("round", "box", "wedge")))
    assert read_checkpoint(tmp_path / "a/last.pt")["class_names"] == ["round", "box", "wedge"]
    with pytest.raises(DataError, match=r"class_names lists 2 name\(s\), but .* has 3 categories "
                                        r"\(circle, square, triangle\)"):
        train(TrainConfig(model="micro", data=str(data), out=str(tmp_path / "b"), batch_size=8, quiet=True,
                          epochs=1, max_steps=1, class_names=("round", "box")))


def test_a_config_rebuilds_from_its_asdict():
    """Checkpoints and results files keep asdict(config): it builds the same TrainConfig again."""
    from dataclasses import asdict

    for cfg in (TrainConfig(), TrainConfig(augment=Augment(0.2, (0.9, 1.1)), class_names=("a", "b"), amp="bf16"),
                TrainConfig(augment=None)):
        plain = json.loads(json.dumps(asdict(cfg)))  # as a results file holds it: lists, no tuples
        assert TrainConfig(**plain) == cfg
    assert TrainConfig(augment={"hflip": 0.0}).augment == Augment(0.0, (0.5, 1.5))


def test_splits_named_one_by_one(data, tmp_path):
    """train_data / val_data: a COCO file and an image folder each, wherever they are."""
    summary = train(TrainConfig(model="micro", out=str(tmp_path / "run"), batch_size=8, quiet=True, epochs=1,
                                train_data=(str(data / "train/annotations.json"), str(data / "train/images")),
                                val_data=(str(data / "train/annotations.json"), str(data / "train/images"))))
    assert summary["step"] == 2 and "map50" in summary          # evaluated on the named val split
    assert not (tmp_path / "run/data").exists()                 # no synthetic set made for data: synthetic
    with pytest.raises(DataError, match="nothing.json: cannot read"):
        train(TrainConfig(model="micro", out=str(tmp_path / "bad"), quiet=True,
                          train_data=(str(tmp_path / "nothing.json"), str(tmp_path))))
