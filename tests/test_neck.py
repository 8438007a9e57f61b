"""Our graphs as the neck of torchvision's detectors: RetinaNet, FCOS, Faster R-CNN.

The reference is torchvision itself: its own ``BackboneWithFPN`` + ``LastLevelP6P7`` fixes
the keys and shapes a neck must give, and its detectors' own losses must fall when
they train with our neck in place of their FPN.
"""

from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

import efficientdet_graph as edg
from efficientdet_graph import ConfigError
from efficientdet_graph.model import BackboneWithNeck, neck
from efficientdet_graph.train import CocoDetection, make_synthetic, resolve_data

SIZE = 64
C3_C5 = {"layer2": "0", "layer3": "1", "layer4": "2"}
C2_C5 = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
RESNET18 = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = make_synthetic(tmp_path_factory.mktemp("shapes"), 4, 1, SIZE, 3, seed=0)
    data = CocoDetection(*resolve_data(root, "train"), SIZE, train=False)
    return [data[i] for i in range(len(data))]


def _body(layers: dict) -> IntermediateLayerGetter:
    """ResNet-18 with frozen BN and no trained layers (torchvision's ``trainable_backbone_layers=0``):
    the neck and the heads learn, which keeps the test cheap on a busy CPU."""
    net = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    net.requires_grad_(False)
    return IntermediateLayerGetter(net, return_layers=layers)


def _backbone(graph, layers: dict, channels: int = 64) -> BackboneWithNeck:
    return BackboneWithNeck(_body(layers), neck(graph, [RESNET18[k] for k in layers], channels))


def test_neck_matches_torchvisions_fpn_contract():
    """Same keys, channels and sizes as torchvision's FPN with P6/P7 (RetinaNet's) and with 'pool'."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE)
    theirs = BackboneWithFPN(torchvision.models.resnet18(weights=None), C3_C5, [128, 256, 512], 64,
                             extra_blocks=LastLevelP6P7(64, 64)).eval()
    ours = _backbone("bifpn", C3_C5).eval()
    with torch.no_grad():
        a, b = theirs(x), ours(x)
    assert isinstance(b, OrderedDict) and ours.out_channels == theirs.out_channels == 64
    assert list(a) == list(b) == ["0", "1", "2", "p6", "p7"]
    assert [t.shape for t in a.values()] == [t.shape for t in b.values()]

    theirs = BackboneWithFPN(torchvision.models.resnet18(weights=None), C2_C5, [64, 128, 256, 512], 64,
                             extra_blocks=LastLevelMaxPool()).eval()
    ours = _backbone(edg.build_graph(edg.generate("bifpn", 2, 6)), C2_C5).eval()
    with torch.no_grad():
        a, b = theirs(x), ours(x)
    assert list(b) == ["0", "1", "2", "3", "p6"] and list(a)[:4] == list(b)[:4]
    assert [t.shape for t in a.values()] == [t.shape for t in b.values()]


def test_neck_rejects_more_maps_than_levels():
    with pytest.raises(ConfigError, match="has only 5 levels"):
        neck("bifpn", [8] * 6, 16)


def _train(model, shapes, label_offset: int = 0, steps: int = 30) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    model.train()
    for step in range(steps):
        batch = [shapes[(step * 2 + j) % len(shapes)] for j in range(2)]
        images = [b[0] for b in batch]
        targets = [{"boxes": b[1]["boxes"], "labels": b[1]["labels"] + label_offset} for b in batch]
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        losses.append(loss.item())
    return losses


def _falls(losses: list[float]) -> None:
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(map(lambda v: v == v, losses)), losses
    assert last < 0.8 * first, f"loss did not fall: {first:.3f} -> {last:.3f} ({losses})"


def _infer(model, shapes) -> None:
    model.eval()
    with torch.no_grad():
        out = model([shapes[0][0], shapes[1][0]])
    assert len(out) == 2
    for det in out:
        assert det["boxes"].shape[1:] == (4,) and len(det["boxes"]) == len(det["scores"]) == len(det["labels"])


# torchvision normalises inside the model; our data set already did.
PLAIN = {"min_size": SIZE, "max_size": SIZE, "image_mean": [0.0] * 3, "image_std": [1.0] * 3}


@pytest.mark.parametrize("detector,graph", [("retinanet", "bifpn"), ("fcos", "panet")])
def test_one_stage_detectors_train_with_our_neck(shapes, detector, graph):
    torch.manual_seed(0)
    backbone = _backbone(graph, C3_C5)
    cls = RetinaNet if detector == "retinanet" else FCOS
    model = cls(backbone, num_classes=3, **PLAIN)
    _falls(_train(model, shapes))
    _infer(model, shapes)


def test_faster_rcnn_trains_with_our_neck(shapes):
    """Faster R-CNN's RPN reads every level, its RoI pooling the input keys ('0'..'3')."""
    torch.manual_seed(0)
    backbone = _backbone(edg.build_graph(edg.generate("bifpn", 2, 6)), C2_C5)
    # a box head at the neck's width (torchvision's default is a 12.5M-parameter MLP)
    box_head = TwoMLPHead(64 * 7 * 7, 128)
    model = FasterRCNN(backbone, num_classes=None, box_head=box_head, box_predictor=FastRCNNPredictor(128, 4),
                       box_batch_size_per_image=64, rpn_batch_size_per_image=64, **PLAIN)  # class 0: background
    _falls(_train(model, shapes, label_offset=1, steps=20))
    _infer(model, shapes)

