"""Class and box heads: separable convs shared across levels, one BN per level."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import ACTIVATIONS, CompileOptions

__all__ = ["Head", "SeparableConv2d"]


class SeparableConv2d(nn.Sequential):
    """depthwise 3x3 -> pointwise 1x1 (bias only where no BN follows)."""

    def __init__(self, cin: int, cout: int, bias: bool):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pw = nn.Conv2d(cin, cout, 1, bias=bias)


class Head(nn.Module):
    """``repeats`` x (sep conv -> BN of this level -> act), then a sep conv predicting
    ``num_anchors * outputs_per_anchor`` maps; conv weights are shared by all levels."""

    def __init__(
        self, levels: list[int], channels: int, repeats: int, num_anchors: int, outputs_per_anchor: int,
        act: str, opts: CompileOptions, prior: float | None = None,
    ):
        super().__init__()
        self.levels = list(levels)
        self.convs = nn.ModuleList([SeparableConv2d(channels, channels, bias=False) for _ in range(repeats)])
        self.bns = nn.ModuleList(
            [
                nn.ModuleDict({f"P{l}": nn.BatchNorm2d(channels, eps=opts.bn_eps, momentum=opts.bn_momentum)
                               for l in self.levels})
                for _ in range(repeats)
            ]
        )
        self.act = ACTIVATIONS.get(act)()
        self.predict = SeparableConv2d(channels, num_anchors * outputs_per_anchor, bias=True)
        if prior is not None:  # focal-loss prior for the class head (RetinaNet)
            nn.init.constant_(self.predict.pw.bias, -math.log((1 - prior) / prior))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for level, x in zip(self.levels, feats):
            for conv, bns in zip(self.convs, self.bns):
                x = self.act(bns[f"P{level}"](conv(x)))
            outs.append(self.predict(x))
        return outs
