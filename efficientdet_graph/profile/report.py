"""Profiles of models: parameters and FLOPs per component and per graph node, and the
EfficientDet family beside the official counts."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..model import EfficientDet, builtin_models
from .analytic import _model
from .counter import count_flops, count_params
from .official import OFFICIAL

__all__ = ["Profile", "profile_model", "family_rows", "redundant_biases", "COMPONENTS"]

COMPONENTS = ("backbone", "adapter", "fpn", "class_net", "box_net")
FLOPS_NOTE = "FLOPs = multiply-adds (fvcore's convention, as the EfficientDet paper)"


@dataclass
class Profile:
    name: str
    image_size: int
    params: int
    flops: int
    components: dict[str, dict[str, int]] = field(default_factory=dict)
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"flops_convention": FLOPS_NOTE, **asdict(self)}


def profile_model(model: EfficientDet | str | os.PathLike, image_size: int | None = None) -> Profile:
    """Count a model: a spec (built-in name or file) from its formulas without building
    it (``model_cost``), a module by running it on its device under the FLOP counter."""
    if not isinstance(model, nn.Module):
        name, hw, cost, _ = _model(model, image_size)
        return Profile(name, hw[0], cost.params, cost.flops, cost.components, cost.nodes)
    m = model.eval()
    size = image_size or m.spec.image_size
    device = next(m.parameters()).device
    counts = count_flops(m, (torch.empty(1, 3, size, size, device=device),))
    comps = {c: {"params": count_params(getattr(m, c)), "flops": counts.by_module.get(c, 0)} for c in COMPONENTS}
    # A node's block is never called itself: the generated forward calls its edges,
    # fusion and op directly, so its FLOPs are the sum over those calls.
    called = [n.target for n in m.fpn.graph.nodes if n.op == "call_module"]
    nodes = {}
    for name, block in m.fpn.named_children():
        if name == "out_adapters":
            continue
        flops = sum(counts.by_module.get(f"fpn.{t}", 0) for t in called if t.startswith(f"{name}."))
        nodes[name] = {"params": count_params(block), "flops": flops}
    return Profile(m.spec.name, size, count_params(m), counts.total, comps, nodes)


def redundant_biases(m: EfficientDet) -> int:
    """Parameters the TF code adds: a bias on every conv that a BN follows (in the
    feature network, the input adapter and the heads' shared convs)."""
    n = sum(b.num_features for part in (m.fpn, m.adapter) for b in part.modules() if isinstance(b, nn.BatchNorm2d))
    for head in (m.class_net, m.box_net):
        n += sum(conv.pw.out_channels for conv in head.convs)
    return n


def family_rows() -> list[dict]:
    """D0-D7x at their own resolutions beside the official counts (counted without
    building them: ``model_cost``)."""
    rows = []
    for name in sorted(OFFICIAL, key=lambda n: (len(n), n)):
        if name not in builtin_models():
            continue
        _, hw, p, biases = _model(name, None)
        official_params, official_flops, exact = OFFICIAL[name]
        with_bias = p.params + biases
        rows.append({
            "model": name, "image_size": hw[0],
            "params": p.params, "params_with_tf_biases": with_bias, "official_params": official_params,
            "params_diff_pct": 100.0 * (p.params - official_params) / official_params,
            "params_with_tf_biases_diff_pct": 100.0 * (with_bias - official_params) / official_params,
            "flops": p.flops, "official_flops": official_flops,
            "flops_diff_pct": 100.0 * (p.flops - official_flops) / official_flops,
            "official_exact": exact,
        })
    return rows
