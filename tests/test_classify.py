"""Classification pre-training of a backbone (the reference table's shared start): it
learns (its loss falls), resumes at epoch granularity, and its weights start a detector."""

from __future__ import annotations

import torch

from efficientdet_graph.model import create_model
from efficientdet_graph.train.classify import pretrain_classifier
from efficientdet_graph.train.data import resolve_data
from efficientdet_graph.train.multiscale import MultiscaleConfig, make_multiscale


def test_classification_pretraining_learns_resumes_and_fits_the_detector(tmp_path):
    data = make_multiscale(tmp_path / "d", 16, 0, 0, seed=1, cfg=MultiscaleConfig(image_size=96))
    ann, img = resolve_data(data, "train")
    said: list[str] = []
    state = pretrain_classifier("tinynet_e", ann, img, 64, 12, tmp_path / "w", batch_size=4, say=said.append)
    assert [s.split(":")[0] for s in said] == [f"classification pre-training epoch {e}/12" for e in range(1, 13)]
    losses = [float(s.split("loss ")[1].split(",")[0]) for s in said]
    # 16 images, 48 steps: it fits them (the crops change the labels, so compare averages)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.03, losses
    said.clear()
    again = pretrain_classifier("tinynet_e", ann, img, 64, 13, tmp_path / "w", batch_size=4, say=said.append)
    assert len(said) == 1 and said[0].startswith("classification pre-training epoch 13/13")  # resumed after 12
    assert not all(torch.equal(again[k], state[k]) for k in state)
    model = create_model("micro", num_classes=8)
    assert set(state) == set(model.backbone.state_dict())
    model.backbone.load_state_dict(state)  # strict: every tensor, every shape
