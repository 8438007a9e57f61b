"""A backbone pre-trained by multi-label classification on a detection set's own images.

Where no pretrained weights can be downloaded, a detector's backbone can still start from
something better than noise -- but pre-training it inside a detector ties its features to
that detector's neck. The reference table's first schedule did that with the no-fusion
neck, and the no-fusion neck then beat every fusing neck (docs/reference-table.md). Here
the backbone learns, like an ImageNet backbone, to say *which classes are in the image*:
each level's features are averaged over the image and one linear layer predicts the
multi-hot class vector (binary cross-entropy). No neck is involved, so none is favoured.

Resumable at epoch granularity (``work/classify.pt``, written atomically).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_open
from ..model.backbone import Backbone
from .data import Augment, CocoDetection, EpochBatches, make_loader

__all__ = ["pretrain_classifier"]


def pretrain_classifier(backbone: str, annotations: Path, images: Path, image_size: int, epochs: int, work: Path,
                        batch_size: int = 16, lr: float = 4e-3, seed: int = 0, levels: range = range(3, 8),
                        say=print) -> dict[str, torch.Tensor]:
    """Train ``backbone`` to predict the classes present in each training image; returns
    its state dict (keys as ``Backbone.state_dict()``)."""
    torch.manual_seed(seed)
    data = CocoDetection(annotations, images, image_size, train=True, augment=Augment())
    body = Backbone(backbone, levels)
    head = nn.Linear(sum(body.channels.values()), data.num_classes)
    params = list(body.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps_per_epoch = len(data) // batch_size
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, 0.1 + 0.9 * s / max(1, steps_per_epoch)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    ckpt, start = work / "classify.pt", 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        body.load_state_dict(state["body"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = int(state["epoch"])
    body.train()
    body.to(memory_format=torch.channels_last)  # oneDNN's fast layout on the CPU (as the training loop)
    index = {c: i for i, c in enumerate(data.category_ids)}
    batches = EpochBatches(len(data), batch_size, seed)
    loader = make_loader(data, batches, 0)
    for epoch in range(start, epochs):
        batches.set_epoch(epoch)
        t0, seen, total_loss = time.perf_counter(), 0, 0.0
        for images, targets in loader:
            y = torch.zeros(len(images), data.num_classes)
            for row, t in enumerate(targets):
                for label in t["labels"].tolist():
                    y[row, label] = 1.0
            feats = body(images.contiguous(memory_format=torch.channels_last))
            pooled = torch.cat([f.mean(dim=(2, 3)) for f in feats], dim=1)
            loss = F.binary_cross_entropy_with_logits(head(pooled), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            seen += len(images)
            total_loss += loss.item() * len(images)
        say(f"classification pre-training epoch {epoch + 1}/{epochs}: loss {total_loss / max(1, seen):.4f}, "
            f"{seen / (time.perf_counter() - t0):.1f} images/s")
        with atomic_open(ckpt, "wb") as f:
            torch.save({"body": body.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "epoch": epoch + 1}, f)
    return body.state_dict()
