"""The input adapter: pyramid levels the backbone does not give (P6, P7, P8), made as
in EfficientDet: 1x1 conv + BN where channels differ, then a 3x3/2 max-pool."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import DOWNSAMPLERS, CompileOptions
from ..ops.resample import Adapter

__all__ = ["InputAdapter"]


class InputAdapter(nn.Module):
    def __init__(self, top_channels: int, levels: list[int], channels: int, opts: CompileOptions):
        super().__init__()
        self.levels = list(levels)
        cin = top_channels
        for level in self.levels:
            steps: list[nn.Module] = [Adapter(cin, channels, opts)] if cin != channels else []
            steps.append(DOWNSAMPLERS.get("max_pool")(channels, opts))
            self.add_module(f"P{level}", nn.Sequential(*steps))
            cin = channels

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out = list(feats)
        for level in self.levels:
            out.append(getattr(self, f"P{level}")(out[-1]))
        return out
