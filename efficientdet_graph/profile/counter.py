"""Counting parameters and FLOPs.

FLOPs here are multiply-adds, as the EfficientDet and EfficientNet papers report them
(fvcore's convention): a convolution counts batch * C_out * (C_in / groups) * k_h * k_w
* H_out * W_out, an eval-mode batch norm 2 per element (1 without affine), a
training-mode batch norm, group or layer norm 5 per element (4 without affine), nearest
upsampling 1 and bilinear upsampling 4 per output element, adaptive average pooling 1 per
input element (except to 1x1, which torch turns into a mean before dispatch: 0 here, 1 per
element in fvcore); activations, additions, other pooling and padding count 0.

``count_flops`` runs the model on the meta device under a dispatch mode: no real
tensors, no arithmetic, so even D7x at 1536 px is counted in about a second.
``fvcore_flops`` is the reference counter it is tested against.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_params", "count_flops", "fvcore_flops", "FlopCounts"]

aten = torch.ops.aten


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _conv(args, out) -> int:
    x, w = args[0], args[1]
    batch = int(x.shape[0])
    return batch * _numel(w.shape) * _numel(out.shape[2:])


def _bn_eval(args, out) -> int:
    weight = args[1] if len(args) > 1 else None
    return _numel(args[0].shape) * (2 if weight is not None else 1)


def _bn(args, out) -> int:
    """``native_batch_norm(x, weight, bias, mean, var, training, ...)``; fvcore counts a
    batch norm in training mode (and an instance norm, which runs as one) like a norm."""
    training = bool(args[5]) if len(args) > 5 else False
    if training:
        return _norm(1)(args, out)
    return _bn_eval(args, out)


def _norm(weight_index: int) -> Callable:
    def rule(args, out) -> int:
        weight = args[weight_index] if len(args) > weight_index else None
        return _numel(args[0].shape) * (5 if weight is not None else 4)

    return rule


def _out_elements(args, out) -> int:
    return _numel(out.shape)


def _in_elements(args, out) -> int:
    return _numel(args[0].shape)


def _mm(args, out) -> int:
    a, b = args[-2], args[-1]
    return _numel(a.shape) * int(b.shape[-1])


RULES: dict = {
    aten.convolution.default: _conv,
    aten._convolution.default: _conv,
    aten._native_batch_norm_legit_no_training.default: _bn_eval,
    aten.native_batch_norm.default: _bn,
    aten.native_group_norm.default: _norm(1),
    aten.native_layer_norm.default: _norm(2),
    aten.upsample_nearest2d.default: _out_elements,
    aten.upsample_nearest2d.vec: _out_elements,
    aten.upsample_bilinear2d.default: lambda a, o: 4 * _numel(o.shape),
    aten.upsample_bilinear2d.vec: lambda a, o: 4 * _numel(o.shape),
    aten._adaptive_avg_pool2d.default: _in_elements,
    aten.mm.default: _mm,
    aten.addmm.default: lambda a, o: _mm(a[1:], o),
    aten.bmm.default: _mm,
}


class FlopCounts:
    """Total and per-module FLOPs (a module's count includes its submodules')."""

    def __init__(self) -> None:
        self.total = 0
        self.by_module: dict[str, int] = defaultdict(int)

    def __repr__(self) -> str:
        return f"FlopCounts(total={self.total:,})"


class _Counter(TorchDispatchMode):
    def __init__(self, counts: FlopCounts, stack: list[str]):
        super().__init__()
        self.counts, self.stack = counts, stack

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        rule: Callable | None = RULES.get(func)
        if rule is not None:
            n = int(rule(args, out))
            self.counts.total += n
            for name in set(self.stack):
                self.counts.by_module[name] += n
        return out


def count_flops(model: nn.Module, inputs: tuple, device: str = "meta") -> FlopCounts:
    """FLOPs of ``model(*inputs)``; the model must live on ``device`` (meta by default)."""
    counts, stack = FlopCounts(), []
    handles = []

    def enter(name: str) -> Callable:
        def hook(module, args) -> None:
            stack.append(name)

        return hook

    def leave(module, args, output) -> None:  # must return None: a value would replace the output
        stack.pop()

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_pre_hook(enter(name)))
            handles.append(mod.register_forward_hook(leave))
    try:
        with torch.no_grad(), _Counter(counts, stack):
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return counts


def fvcore_flops(model: nn.Module, inputs: tuple) -> tuple[int, dict[str, int]]:
    """fvcore's count (the reference): total and by module."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return int(analysis.total()), dict(analysis.by_module())
