"""Whole-detector export: onnxruntime and torch.export against ``EfficientDet.detect``."""

import pytest
import torch

from efficientdet_graph.model import create_model
from efficientdet_graph.model.export import export_detector_onnx, export_detector_program, run_onnx_detector
from efficientdet_graph.train import CocoDetection, make_synthetic, resolve_data


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("micro").eval()
    with torch.no_grad():  # random weights give scores around the 0.01 prior: lift them so NMS has work
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
        for p in m.class_net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        m.class_net.predict.pw.bias.fill_(-1.0)
    return m


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = make_synthetic(tmp_path_factory.mktemp("shapes"), 2, 3, 64, 3, seed=1)
    data = CocoDetection(*resolve_data(root, "val"), 64, train=False)
    return torch.stack([data[i][0] for i in range(len(data))])


def _same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert len(w["boxes"]) > 0, "the reference found nothing: the test would prove nothing"
        assert len(g["boxes"]) == len(w["boxes"])
        assert torch.equal(g["labels"], w["labels"])
        assert (g["boxes"] - w["boxes"]).abs().max() <= 1e-3
        assert (g["scores"] - w["scores"]).abs().max() <= 1e-4


def test_onnx_detector_matches_detect(model, images, tmp_path):
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (a test dependency)")
    pytest.importorskip("onnxruntime", reason="checking needs onnxruntime (a test dependency)")
    path = export_detector_onnx(model, tmp_path / "micro.onnx")
    want = model.detect(images, score_threshold=0.05)
    _same(run_onnx_detector(path, images, score_threshold=0.05), want)
    # the batch is dynamic: one image alone gives that image's detections
    _same(run_onnx_detector(path, images[1:2], score_threshold=0.05), want[1:2])


def test_torch_export_detector_matches_detect(model, images):
    from efficientdet_graph.model import select_detections

    program = export_detector_program(model)
    want = model.detect(images, score_threshold=0.05)
    for batch in (images, images[:1]):
        boxes, scores = program.module()(batch)
        _same(select_detections(boxes, scores, 0.05), want[:len(batch)])


def test_checkpoint_carries_class_names_and_predict_draws_them(model, tmp_path, edg):
    from PIL import Image

    from efficientdet_graph.model import load_model, save_model

    model.class_names = ["circle", "square", "triangle"]
    try:
        save_model(model, tmp_path / "m.pt")
    finally:
        model.class_names = None
    assert load_model(tmp_path / "m.pt").class_names == ["circle", "square", "triangle"]
    Image.new("RGB", (80, 60), (120, 90, 200)).save(tmp_path / "img.png")
    code, out, _ = edg("predict", tmp_path / "m.pt", tmp_path / "img.png", "-o", tmp_path / "pred", "--score", "0.05")
    assert code == 0 and "detections (" in out
    listed = out.split("(", 1)[1].split(")")[0]
    assert any(name in listed for name in ("circle", "square", "triangle"))
    assert (tmp_path / "pred" / "img_pred.png").exists()


def test_cli_exports_a_whole_detector(edg, tmp_path):
    pytest.importorskip("onnxruntime")
    code, out, _ = edg("export", "micro", "--onnx", tmp_path / "d.onnx")
    assert code == 0 and "boxes (B, N, 4)" in out and "max abs difference" in out
    assert float(out.split("difference")[-1]) <= 1e-3
