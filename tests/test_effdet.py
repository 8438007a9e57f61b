"""Our D0-D7x equal effdet's (rwightman/efficientdet-pytorch, a test dependency) for the
same weights and input, through the converter."""

import pytest
import torch

effdet = pytest.importorskip("effdet", reason="effdet is a test dependency: pip install '.[test]'")

from efficientdet_graph.model import convert_effdet, create_model, load_model  # noqa: E402


def reference(name: str, size, seed: int = 0, gentle: bool = False):
    """An effdet model with random weights and BN statistics (so no term is trivially 0 or 1)."""
    torch.manual_seed(seed)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    ref = effdet.create_model(name, pretrained=False, pretrained_backbone=False, image_size=hw).eval()
    with torch.no_grad():
        for pname, p in ref.named_parameters():
            if "edge_weights" in pname:
                p.uniform_(0.2, 1.5)
            elif pname.endswith("bias") and ".bn." not in pname and not pname.startswith("backbone"):
                p.normal_(0, 0.1)
        for mod in ref.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.2, 0.6) if gentle else mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
    return ref


def ours_for(ref, name: str, size: int):
    overrides = {"image_size": size}
    if ref.config.backbone_name.startswith("tf_"):
        overrides.update(padding="same", backbone={"name": ref.config.backbone_name})
    return create_model(name, **overrides).eval()


def max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize(
    "effdet_name,ours_name,size",
    [
        ("efficientdet_d0", "efficientdet-d0", 256),
        ("tf_efficientdet_d0", "efficientdet-d0", 256),  # TF padding + redundant biases folded into BN
        ("efficientdet_d3", "efficientdet-d3", 256),
    ],
)
def test_same_outputs_as_effdet(effdet_name, ours_name, size):
    ref = reference(effdet_name, size)
    ours = convert_effdet(ours_for(ref, ours_name, size), ref.state_dict())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        (rc, rb), (oc, ob) = ref(x), ours(x)
    assert [c.shape for c in rc] == [c.shape for c in oc]
    assert max_diff(rc, oc) <= 1e-4 and max_diff(rb, ob) <= 1e-4


def test_same_outputs_as_effdet_d7x():
    """P3-P8, sum fusion, B7 backbone, at a reduced input size."""
    ref = reference("tf_efficientdet_d7x", 256, gentle=True)
    ours = convert_effdet(ours_for(ref, "efficientdet-d7x", 256), ref.state_dict())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        (rc, rb), (oc, ob) = ref(x), ours(x)
    assert len(oc) == 6
    scale = max(float(c.abs().max()) for c in rc)
    assert max_diff(rc, oc) <= 1e-4 * max(1.0, scale) and max_diff(rb, ob) <= 1e-4 * max(1.0, scale)


def test_edg_convert_cli(edg, tmp_path):
    ref = reference("efficientdet_d0", 128)
    src = tmp_path / "effdet_d0.pth"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, src)
    out = tmp_path / "ours.pt"
    code, text, _ = edg("convert", src, "--model", "efficientdet-d0", "-o", out)
    assert code == 0 and "wrote" in text
    ours = load_model(out).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert max_diff(ref(x)[0], ours(x)[0]) <= 1e-4


def test_convert_refuses_a_mismatched_checkpoint(edg, tmp_path):
    ref = reference("efficientdet_d1", 128)
    src = tmp_path / "d1.pth"
    torch.save(ref.state_dict(), src)
    code, _, err = edg("convert", src, "--model", "efficientdet-d0", "-o", tmp_path / "x.pt")
    assert code == 2 and "do not fit" in err


# Image sizes not divisible by 2^max_level: the official code and effdet place a level's
# anchors with stride image size / feature size on each axis (not 2^level).
ODD_SIZES = [(385, 513), (511, 513), (300, 200), (97, 131), (512, 512)]


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("levels,anchor_scale", [((3, 7), 4.0), ((3, 8), 5.0)])
def test_anchors_equal_effdets(size, levels, anchor_scale):
    from effdet.anchors import Anchors as EffdetAnchors

    from efficientdet_graph.compile import level_size
    from efficientdet_graph.model import Anchors

    aspect = [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)]
    theirs = EffdetAnchors(levels[0], levels[1], 3, aspect, anchor_scale, size).boxes.double()  # y1 x1 y2 x2
    lv = list(range(levels[0], levels[1] + 1))
    ours = Anchors(lv, anchor_scale, 3, aspect).boxes([level_size(size, lvl) for lvl in lv], image_size=size,
                                                       dtype=torch.float64)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours[:, [1, 0, 3, 2]], theirs, atol=1e-3, rtol=0)  # effdet rounds to fp32


@pytest.mark.parametrize("size", [(197, 263)])
def test_detections_equal_effdets_at_odd_sizes(size):
    """Raw outputs in fp64, then each side's post-processing: the same boxes, scores and classes
    (the anchors at 385x513 and other sizes are compared directly above)."""
    from effdet import DetBenchPredict

    ref = reference("efficientdet_d0", size)
    ours = convert_effdet(create_model("efficientdet-d0").eval(), ref.state_dict())
    ref, ours = ref.double(), ours.double()
    bench = DetBenchPredict(ref).eval()
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    h, w = size
    with torch.no_grad():
        theirs = bench(x, {"img_scale": torch.ones(1),  # effdet post-processes in fp32
                           "img_size": torch.tensor([[float(w), float(h)]])})[0]
        mine = ours.detect(x, score_threshold=0.0, max_detections=100)[0]
    theirs = theirs[theirs[:, 4] > 0].double()
    n = len(mine["scores"])
    assert n == len(theirs) and n > 50
    assert torch.allclose(mine["scores"], theirs[:, 4], atol=1e-5)
    assert len(set(theirs[:, 4].tolist())) > n // 2  # scores spread out: the order is not decided by ties
    # the same (class, box) pairs; effdet counts classes from 1
    ours_rows = torch.cat([mine["boxes"], (mine["labels"] + 1)[:, None].double()], 1)
    theirs_rows = torch.cat([theirs[:, :4], theirs[:, 5:6]], 1)
    dist = torch.cdist(ours_rows, theirs_rows, p=float("inf"))
    assert float(dist.min(1).values.max()) < 1e-2 and float(dist.min(0).values.max()) < 1e-2
