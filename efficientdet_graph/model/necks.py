"""A declared feature network as a neck for other detectors.

torchvision's detection models take a ``backbone`` whose output is an ``OrderedDict`` of
feature maps and which has an ``out_channels`` attribute (``BackboneWithFPN``). ``neck``
makes the FPN half of that contract from any graph: the body's maps go in, the graph's
outputs come out under the same keys, and levels the body does not give (P6, P7 for
RetinaNet and FCOS) are made from its top map the EfficientDet way (1x1 conv + BN where
channels differ, then a 3x3/2 max-pool), named ``p6``, ``p7`` as torchvision's
``LastLevelP6P7`` names them.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Sequence

import networkx as nx
import torch
from torch import nn

from ..compile import compile_graph
from ..graph import build_graph, unroll
from ..ops import CompileOptions
from ..passes import load_graph
from ..spec import GraphSpec
from .adapter import InputAdapter

__all__ = ["GraphNeck", "neck", "BackboneWithNeck"]


def _as_graph(graph: nx.DiGraph | GraphSpec | str | os.PathLike) -> nx.DiGraph:
    if isinstance(graph, nx.DiGraph):
        return graph
    if isinstance(graph, GraphSpec):
        return build_graph(graph)
    return load_graph(graph)


class GraphNeck(nn.Module):
    """``OrderedDict`` of backbone maps (lowest stride first) → ``OrderedDict`` of pyramid
    maps with ``out_channels`` channels: the input keys, then ``p{level}`` per extra level."""

    def __init__(self, graph: nx.DiGraph, in_channels: Sequence[int], out_channels: int,
                 repeat: int | None = None, fusion: str | None = None, options: CompileOptions | None = None):
        super().__init__()
        g = unroll(graph) if repeat is not None else graph
        if repeat is not None or fusion is not None:
            defaults = dict(g.graph["defaults"])
            if fusion is not None:
                defaults["fusion"] = fusion
            g.graph = {**g.graph, "defaults": defaults, "repeat": repeat if repeat is not None else g.graph["repeat"]}
        lo, hi = g.graph["levels"]
        self.levels = list(range(lo, hi + 1))
        in_channels = [int(c) for c in in_channels]
        if not in_channels:
            raise ValueError("neck: in_channels lists no feature maps")
        if len(in_channels) > len(self.levels):
            raise ValueError(f"neck: {len(in_channels)} input maps, but graph {g.graph['name']!r} has only "
                             f"{len(self.levels)} levels (P{lo}-P{hi}); use a graph with more levels "
                             f"(edg new bifpn --levels ...) or fewer maps")
        opts = options or CompileOptions()
        self.num_inputs = len(in_channels)
        self.extra_levels = self.levels[self.num_inputs:]
        self.out_channels = out_channels
        self.adapter = InputAdapter(in_channels[-1], self.extra_levels, out_channels, opts)
        cin = {level: (in_channels[i] if i < self.num_inputs else out_channels) for i, level in enumerate(self.levels)}
        self.fpn = compile_graph(g, out_channels, cin, opts)

    def forward(self, x: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        keys, feats = list(x.keys()), list(x.values())
        if len(feats) != self.num_inputs:
            raise ValueError(f"neck: expected {self.num_inputs} feature maps, got {len(feats)} ({keys})")
        outs = self.fpn(*self.adapter(feats))
        names = keys + [f"p{level}" for level in self.extra_levels]
        return OrderedDict(zip(names, outs))


def neck(graph: nx.DiGraph | GraphSpec | str | os.PathLike, in_channels: Sequence[int], out_channels: int,
         repeat: int | None = None, fusion: str | None = None, options: CompileOptions | None = None) -> GraphNeck:
    """A graph (built-in name, path, ``GraphSpec`` or IR) as a detector neck.

    ``in_channels``: channels of the maps the body returns, lowest stride first; they
    feed the graph's lowest levels, the rest of its levels are made from the top map.
    ``repeat`` stacks copies of the graph (as a model spec's ``fpn_repeat``); ``fusion``
    replaces the graph's default fusion.
    """
    return GraphNeck(_as_graph(graph), in_channels, out_channels, repeat, fusion, options)


class BackboneWithNeck(nn.Module):
    """``body`` (returning an ``OrderedDict``, e.g. ``IntermediateLayerGetter``) then a neck:
    a drop-in for torchvision's ``BackboneWithFPN``."""

    def __init__(self, body: nn.Module, neck_module: GraphNeck):
        super().__init__()
        self.body = body
        self.fpn = neck_module
        self.out_channels = neck_module.out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(x))
