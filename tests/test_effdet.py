"""Our D0-D7x equal effdet's (rwightman/efficientdet-pytorch, a test dependency) for the
same weights and input, through the converter."""

import pytest
import torch

effdet = pytest.importorskip("effdet", reason="effdet is a test dependency: pip install '.[test]'")

from efficientdet_graph.model import convert_effdet, create_model, load_model  # noqa: E402


def reference(name: str, size: int, seed: int = 0, gentle: bool = False):
    """An effdet model with random weights and BN statistics (so no term is trivially 0 or 1)."""
    torch.manual_seed(seed)
    ref = effdet.create_model(name, pretrained=False, pretrained_backbone=False, image_size=(size, size)).eval()
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
