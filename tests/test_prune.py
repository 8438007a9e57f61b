"""Pruning shrinks the feature network; the result runs, saves, reloads and exports."""

import pytest

import torch

from efficientdet_graph.model import create_model, load_model
from efficientdet_graph.prune import prune_model


def test_prune_halves_the_pyramid_and_keeps_output_shapes(tmp_path):
    torch.manual_seed(0)
    m = create_model("efficientdet-d0", image_size=128).eval()
    pruned, report = prune_model(m, 0.5)
    assert (report.channels_before, report.channels_after) == (64, 32)
    assert report.fpn_params_after < 0.5 * report.fpn_params_before
    assert report.flops_after < report.flops_before
    assert pruned.fpn.get_submodule("L1_P6_td.op.pw").out_channels == 32
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        (c0, b0), (c1, b1) = m(x), pruned.eval()(x)
    assert [t.shape for t in c0] == [t.shape for t in c1] and [t.shape for t in b0] == [t.shape for t in b1]
    # the kept channels carry the original weights (pruning selects, it does not re-initialise)
    kept = pruned.backbone.state_dict()
    assert all(torch.equal(v, m.backbone.state_dict()[k]) for k, v in kept.items())

    from efficientdet_graph.model import save_model

    path = save_model(pruned, tmp_path / "pruned.pt")
    again = load_model(path).eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(again(x)[0], c1))
    program = torch.export.export(again, (x,))
    assert len(program.module()(x)[0]) == 5


def test_cli_prune(edg, tmp_path, capsys):
    code, out, _ = edg("prune", "efficientdet-d0", "--ratio", "0.5", "--image-size", "128", "-o", tmp_path / "p.pt")
    assert code == 0 and "width 64 -> 32" in out
    assert load_model(tmp_path / "p.pt").spec.fpn_channels == 32
    with pytest.raises(SystemExit) as e:  # argparse rejects the range before any model is built
        edg("prune", "efficientdet-d0", "--ratio", "1.5")
    assert e.value.code == 2 and "--ratio" in capsys.readouterr().err
