"""Per-edge resampling: a 1x1 conv + BN adapter where channels differ, then down- or
up-sampling to the destination level."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import DOWNSAMPLERS, UPSAMPLERS, CompileOptions

__all__ = ["Adapter", "MaxPoolSame", "AvgPoolSame", "Downsample", "Upsample", "Resample", "halved_size"]


def _same_pad(x: torch.Tensor) -> list[int]:
    """TF SAME padding for kernel 3, stride 2: total 1 on even sizes (all at the end),
    2 on odd sizes (one each side)."""
    h, w = x.shape[-2:]
    ph, pw = 1 + h % 2, 1 + w % 2
    return [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]


class MaxPoolSame(nn.Module):
    """3x3 max-pool, stride 2; output ceil(s / 2)."""

    def __init__(self, same: bool):
        super().__init__()
        self.same = same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            return F.max_pool2d(F.pad(x, _same_pad(x), value=float("-inf")), 3, 2)
        return F.max_pool2d(x, 3, 2, padding=1)


class AvgPoolSame(nn.Module):
    """3x3 average pool, stride 2, padded positions not counted; output ceil(s / 2)."""

    def __init__(self, same: bool):
        super().__init__()
        self.same = same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            pad = _same_pad(x)
            ones = torch.ones_like(x[:1, :1])
            total = F.avg_pool2d(F.pad(x, pad), 3, 2)
            count = F.avg_pool2d(F.pad(ones, pad), 3, 2)
            return total / count
        return F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)


class StridedConv(nn.Module):
    """3x3 conv, stride 2 (+ BN), learned downsampling."""

    def __init__(self, channels: int, opts: CompileOptions):
        super().__init__()
        self.same = opts.padding == "same"
        self.conv = nn.Conv2d(channels, channels, 3, 2, padding=0 if self.same else 1, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps=opts.bn_eps, momentum=opts.bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = F.pad(x, _same_pad(x))
        return self.bn(self.conv(x))


DOWNSAMPLERS.register("max_pool")(lambda c, opts: MaxPoolSame(opts.padding == "same"))
DOWNSAMPLERS.register("avg_pool")(lambda c, opts: AvgPoolSame(opts.padding == "same"))
DOWNSAMPLERS.register("conv")(lambda c, opts: StridedConv(c, opts))


def halved_size(x: torch.Tensor, times: int) -> tuple[int, int]:
    """The (height, width) of ``x`` halved ``times`` times, rounding up: ``(s - 1) // 2 + 1``
    each time, the size a pyramid level has ``times`` levels above ``x``'s (what a
    compiled graph uses for a level that has no input tensor)."""
    h, w = x.shape[-2:]
    for _ in range(times):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h, w


class Upsample(nn.Module):
    """Interpolate to the size of ``like``: a tensor of the destination level, or that
    level's (height, width) (halving with rounding up can make it other than exactly
    twice the source)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor, like: torch.Tensor | tuple[int, int]) -> torch.Tensor:
        size = like.shape[-2:] if isinstance(like, torch.Tensor) else like
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.mode, align_corners=False)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


UPSAMPLERS.register("nearest")(lambda opts: Upsample("nearest"))
UPSAMPLERS.register("bilinear")(lambda opts: Upsample("bilinear"))


class Adapter(nn.Sequential):
    """1x1 conv + BN, where an edge's source has other channels than its destination."""

    def __init__(self, cin: int, cout: int, opts: CompileOptions):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=opts.bn_eps, momentum=opts.bn_momentum)


class Downsample(nn.Sequential):
    """Optional adapter, then one halving per level."""


class Resample(nn.Module):
    """An edge going up: optional adapter, then interpolation to the size of ``like``."""

    def __init__(self, adapter: nn.Module | None, up: nn.Module):
        super().__init__()
        self.adapter = adapter if adapter is not None else nn.Identity()
        self.up = up

    def forward(self, x: torch.Tensor, like: torch.Tensor | tuple[int, int]) -> torch.Tensor:
        return self.up(self.adapter(x), like)
