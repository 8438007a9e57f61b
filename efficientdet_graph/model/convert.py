"""Load effdet (rwightman/efficientdet-pytorch) weights into our EfficientDet models.

effdet and TF-ported checkpoints keep a conv bias right before each BN ("redundant
bias"); our convs have none, so each such bias is folded into the following BN's
running mean (BN(x + b) = BN'(x) with mean' = mean - b), exact in eval mode.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from ..compile import module_name
from ..graph import inner_nodes, layer_name
from ..ops.resample import Adapter
from ..spec import input_name
from .build import EfficientDet
from .checkpoint import CheckpointError, read_checkpoint

__all__ = ["effdet_state_dict", "convert_effdet", "load_effdet_checkpoint"]


def load_effdet_checkpoint(path) -> dict[str, torch.Tensor]:
    """The state dict inside an effdet training or release checkpoint."""
    ckpt = read_checkpoint(path)
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found")
    return {k.removeprefix("model.").removeprefix("module."): v for k, v in ckpt.items()}


def effdet_state_dict(sd: dict[str, torch.Tensor], model: EfficientDet) -> tuple[dict[str, torch.Tensor], list[str]]:
    """effdet keys → ours. Returns our state dict and the effdet keys that found no place."""
    g = model.graph
    lo, hi = g.graph["levels"]
    n_levels = hi - lo + 1
    layer = inner_nodes(g)
    repeat = model.spec.fpn_repeat
    outputs = g.graph["outputs"]

    def ours(r: int, node: str) -> str:  # r is 0-based
        return module_name(layer_name(r + 1, node) if repeat > 1 else node)

    def source(r: int, offset: int) -> str:
        if offset < n_levels:
            level = lo + offset
            if r == 0:
                return input_name(level)
            return layer_name(r, outputs[level]) if repeat > 1 else outputs[level]
        return layer_name(r + 1, layer[offset - n_levels]) if repeat > 1 else layer[offset - n_levels]

    def adapter_prefix(prefix: str) -> str:
        for name, mod in model.get_submodule(prefix).named_modules():
            if isinstance(mod, Adapter):
                return f"{prefix}.{name}" if name else prefix
        raise KeyError(prefix)

    out: dict[str, torch.Tensor] = {}
    biases: dict[str, list[torch.Tensor]] = defaultdict(list)  # BN prefix -> biases to fold
    left: list[str] = []
    head_levels = model.levels
    rules = [
        (r"backbone\.(.+)", lambda m: f"backbone.body.{m[1]}"),
        (r"fpn\.resample\.(\d+)\.conv\.conv\.(weight)", lambda m: f"adapter.P{lo + int(m[1])}.0.conv.{m[2]}"),
        (r"fpn\.resample\.(\d+)\.conv\.bn\.(.+)", lambda m: f"adapter.P{lo + int(m[1])}.0.bn.{m[2]}"),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv_dw\.weight",
         lambda m: f"fpn.{ours(int(m[1]), layer[int(m[2])])}.op.dw.weight"),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv_pw\.weight",
         lambda m: f"fpn.{ours(int(m[1]), layer[int(m[2])])}.op.pw.weight"),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.bn\.(.+)",
         lambda m: f"fpn.{ours(int(m[1]), layer[int(m[2])])}.op.bn.{m[3]}"),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.conv\.weight",
         lambda m: adapter_prefix(f"fpn.{ours(int(m[1]), layer[int(m[2])])}.edges."
                                  f"{module_name(source(int(m[1]), int(m[3])))}") + ".conv.weight"),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.bn\.(.+)",
         lambda m: adapter_prefix(f"fpn.{ours(int(m[1]), layer[int(m[2])])}.edges."
                                  f"{module_name(source(int(m[1]), int(m[3])))}") + f".bn.{m[4]}"),
        (r"(class_net|box_net)\.conv_rep\.(\d+)\.conv_dw\.weight", lambda m: f"{m[1]}.convs.{m[2]}.dw.weight"),
        (r"(class_net|box_net)\.conv_rep\.(\d+)\.conv_pw\.weight", lambda m: f"{m[1]}.convs.{m[2]}.pw.weight"),
        (r"(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\.bn\.(.+)",
         lambda m: f"{m[1]}.bns.{m[2]}.P{head_levels[int(m[3])]}.{m[4]}"),
        (r"(class_net|box_net)\.predict\.conv_dw\.weight", lambda m: f"{m[1]}.predict.dw.weight"),
        (r"(class_net|box_net)\.predict\.conv_pw\.(weight|bias)", lambda m: f"{m[1]}.predict.pw.{m[2]}"),
    ]
    bias_rules = [
        (r"fpn\.resample\.(\d+)\.conv\.conv\.bias", lambda m: [f"adapter.P{lo + int(m[1])}.0.bn"]),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv_pw\.bias",
         lambda m: [f"fpn.{ours(int(m[1]), layer[int(m[2])])}.op.bn"]),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.conv\.bias",
         lambda m: [adapter_prefix(f"fpn.{ours(int(m[1]), layer[int(m[2])])}.edges."
                                   f"{module_name(source(int(m[1]), int(m[3])))}") + ".bn"]),
        (r"(class_net|box_net)\.conv_rep\.(\d+)\.conv_pw\.bias",
         lambda m: [f"{m[1]}.bns.{m[2]}.P{level}" for level in head_levels]),
    ]
    edge_weight = re.compile(r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.edge_weights")
    for key, value in sd.items():
        m = edge_weight.fullmatch(key)
        if m:
            node = ours(int(m[1]), layer[int(m[2])])
            for i, w in enumerate(value.unbind(0)):
                out[f"fpn.{node}.fuse.weights.{i}"] = w.clone()
            continue
        for pattern, target in bias_rules:
            m = re.fullmatch(pattern, key)
            if m:
                for bn in target(m):
                    biases[bn].append(value)
                break
        else:
            for pattern, target in rules:
                m = re.fullmatch(pattern, key)
                if m:
                    out[target(m)] = value
                    break
            else:
                left.append(key)
    for bn, bs in biases.items():
        key = f"{bn}.running_mean"
        if key not in out:
            left.append(f"(bias for {bn})")
            continue
        out[key] = out[key] - sum(bs)
    return out, left


def convert_effdet(model: EfficientDet, sd: dict[str, torch.Tensor]) -> EfficientDet:
    """Load effdet weights into ``model`` (in place); every tensor must find its place."""
    mapped, left = effdet_state_dict(sd, model)
    own = model.state_dict()
    wrong = [k for k, v in mapped.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    if left or wrong or missing or unexpected:
        def show(xs):
            return ", ".join(xs[:4]) + (f" (+{len(xs) - 4} more)" if len(xs) > 4 else "")
        parts = [f"{name}: {show(xs)}" for name, xs in (
            ("effdet keys with no place", left), ("shape mismatch", wrong),
            ("ours not in the checkpoint", missing), ("mapped keys we lack", unexpected)) if xs]
        raise CheckpointError("the effdet weights do not fit this model; " + "; ".join(parts))
    model.load_state_dict(mapped, strict=True)
    return model
