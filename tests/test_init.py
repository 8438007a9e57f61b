"""`edg train --init CKPT`: a run starts from another run's backbone weights (the way a
reference job starts from the table's shared backbone), and a backbone of another shape
is refused with a clear message."""

from __future__ import annotations

import subprocess
import sys

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
