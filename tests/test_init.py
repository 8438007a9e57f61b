"""`edg train --init CKPT`: a run starts from another run's backbone weights (the way a
reference job starts from the table's shared backbone), and a backbone of another shape
is refused with a clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from efficientdet_graph.train import TrainConfig, make_synthetic, train


def _params(path) -> dict:
    """The backbone's parameters (not BN statistics, which any step moves) as saved."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("backbone.") and not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked"))}


def test_init_starts_from_the_checkpoints_backbone_and_refuses_another(tmp_path):
    data = make_synthetic(tmp_path / "data", 16, 8, 64, 3, 0)
    common = dict(model="micro", data=str(data), batch_size=8, quiet=True, workers=0, epochs=1, max_steps=1)
    train(TrainConfig(**common, out=str(tmp_path / "a"), seed=1, lr=5e-2))
    # one step at a negligible learning rate: the saved (EMA) weights are the start's
    train(TrainConfig(**common, out=str(tmp_path / "b"), seed=2, lr=1e-12, init=str(tmp_path / "a" / "last.pt")))
    train(TrainConfig(**common, out=str(tmp_path / "c"), seed=2, lr=1e-12))
    a, b, c = (_params(tmp_path / x / "last.pt") for x in "abc")
    assert a.keys() == b.keys() and len(a) > 10
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)

    other = tmp_path / "other.yaml"
    other.write_text("name: other\ngraph: fpn\nbackbone: {name: mobilenetv3_small_050}\nimage_size: 64\n"
                     "fpn_channels: 16\nfpn_repeat: 1\nhead_repeat: 1\nnum_classes: 3\n")
    bad = subprocess.run([sys.executable, "-m", "efficientdet_graph", "train", str(other), "--data", str(data),
                          "--epochs", "1", "--max-steps", "1", "--out", str(tmp_path / "d"), "--workers", "0",
                          "--init", str(tmp_path / "a" / "last.pt")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "backbone does not fit" in bad.stderr


def test_backbone_lr_scales_the_backbones_steps_and_zero_freezes_it(tmp_path):
    """``backbone_lr`` is the backbone's learning rate as a multiple of lr: 0 leaves every
    backbone parameter as it started while the rest trains, for ``backbone_lr_epochs`` if
    given; the saved optimizer keeps the ratio, and a resume with a new --lr keeps it too."""
    from efficientdet_graph.model.checkpoint import read_checkpoint

    data = make_synthetic(tmp_path / "data", 16, 8, 64, 3, 0)
    common = dict(model="micro", data=str(data), batch_size=8, quiet=True, workers=0, epochs=2, eval_every=99,
                  ema_decay=0.0)  # EMA off: the saved weights are the optimizer's
    train(TrainConfig(**common, out=str(tmp_path / "start"), seed=1, max_steps=1, lr=1e-12))
    start = read_checkpoint(tmp_path / "start" / "last.pt")["state_dict"]
    train(TrainConfig(**common, out=str(tmp_path / "frozen"), seed=1, max_steps=2, lr=5e-2, backbone_lr=0.0))
    frozen = read_checkpoint(tmp_path / "frozen" / "last.pt")["state_dict"]
    learned = [k for k in start if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    # the start took one step at lr 1e-12: within 1e-9 of the initial weights
    assert all(torch.allclose(start[k], frozen[k], rtol=0, atol=1e-9) for k in learned if k.startswith("backbone."))
    assert not all(torch.allclose(start[k], frozen[k], rtol=0, atol=1e-6) for k in learned
                   if not k.startswith("backbone."))

    # frozen for half an epoch (one step of 8 of the 16 images), then trained at lr
    for steps in (1, 2):
        train(TrainConfig(**common, out=str(tmp_path / f"half{steps}"), seed=1, max_steps=steps, lr=5e-2,
                          backbone_lr=0.0, backbone_lr_epochs=0.5))
    half = [read_checkpoint(tmp_path / f"half{n}" / "last.pt")["state_dict"] for n in (1, 2)]
    assert all(torch.allclose(start[k], half[0][k], rtol=0, atol=1e-9) for k in learned if k.startswith("backbone."))
    assert not all(torch.allclose(start[k], half[1][k], rtol=0, atol=1e-6) for k in learned
                   if k.startswith("backbone."))

    run = tmp_path / "scaled"
    train(TrainConfig(**common, out=str(run), seed=1, max_steps=1, lr=1e-3, backbone_lr=0.25))
    train(TrainConfig(**common, out=str(run), seed=1, max_steps=2, lr=2e-3, backbone_lr=0.25, resume=True))
    groups = read_checkpoint(run / "last.pt")["train_state"]["optimizer"]["param_groups"]
    slow, rest = sorted(groups, key=lambda g: g["lr"])
    assert slow["initial_lr"] == rest["initial_lr"] == 2e-3 and slow["lr"] == pytest.approx(0.25 * rest["lr"])
    assert len(slow["params"]) == len([k for k in learned if k.startswith("backbone.")])  # the backbone's, only


def test_backbone_lr_refuses_a_negative_multiple(tmp_path):
    data = make_synthetic(tmp_path / "data", 16, 8, 64, 3, 0)
    bad = subprocess.run([sys.executable, "-m", "efficientdet_graph", "train", "micro", "--data", str(data),
                          "--out", str(tmp_path / "o"), "--backbone-lr", "-0.5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--backbone-lr" in bad.stderr
