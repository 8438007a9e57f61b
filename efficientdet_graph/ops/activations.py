"""Activations by name."""

from __future__ import annotations

from torch import nn

from .registry import ACTIVATIONS

ACTIVATIONS.register("swish")(lambda: nn.SiLU(inplace=False))
ACTIVATIONS.register("silu")(lambda: nn.SiLU(inplace=False))
ACTIVATIONS.register("relu")(lambda: nn.ReLU(inplace=False))
ACTIVATIONS.register("relu6")(lambda: nn.ReLU6(inplace=False))
ACTIVATIONS.register("none")(lambda: nn.Identity())
