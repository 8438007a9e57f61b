"""Node ops: what a node does to its fused input."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .registry import NODE_OPS, CompileOptions

__all__ = ["SeparableConv", "ConvBnAct", "ActConvBn"]


class SeparableConv(nn.Sequential):
    """act -> depthwise 3x3 -> pointwise 1x1 -> BN (EfficientDet's BiFPN node).

    No conv bias: the BN right after makes it redundant (the TF code keeps one; that
    is the parameter-count difference noted in docs/reference.md)."""

    def __init__(self, channels: int, act: nn.Module, opts: CompileOptions):
        super().__init__()
        self.act = act
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps=opts.bn_eps, momentum=opts.bn_momentum)


class ConvBnAct(nn.Sequential):
    """3x3 conv -> BN -> act (FPN style)."""

    def __init__(self, channels: int, act: nn.Module, opts: CompileOptions):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps=opts.bn_eps, momentum=opts.bn_momentum)
        self.act = act


class ActConvBn(nn.Sequential):
    """act -> 3x3 conv -> BN (NAS-FPN's ReLU-conv-BN after each merge)."""

    def __init__(self, channels: int, act: nn.Module, opts: CompileOptions):
        super().__init__()
        self.act = act
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps=opts.bn_eps, momentum=opts.bn_momentum)


OpFactory = Callable[[int, nn.Module, CompileOptions], nn.Module]

NODE_OPS.register("sep_conv")(SeparableConv)
NODE_OPS.register("conv_bn_act")(ConvBnAct)
NODE_OPS.register("act_conv_bn")(ActConvBn)
NODE_OPS.register("identity")(lambda channels, act, opts: nn.Identity())

