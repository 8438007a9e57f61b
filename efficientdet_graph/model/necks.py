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
from ..errors import ConfigError
from ..graph import build_graph, input_levels, output_levels, unroll
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
    maps with ``out_channels`` channels, one per output level of the graph: the key of the
    map fed at that level, else ``p{level}``."""

    def __init__(self, graph: nx.DiGraph, in_channels: Sequence[int], out_channels: int,
                 repeat: int | None = None, fusion: str | None = None, options: CompileOptions | None = None):
        super().__init__()
        g = unroll(graph) if repeat is not None else graph
        if repeat is not None or fusion is not None:
            defaults = dict(g.graph["defaults"])
            if fusion is not None:
                defaults["fusion"] = fusion
            g.graph = {**g.graph, "defaults": defaults, "repeat": repeat if repeat is not None else g.graph["repeat"]}
        ins = input_levels(g)
        in_channels = [int(c) for c in in_channels]
        if not in_channels:
            raise ConfigError("neck: in_channels lists no feature maps")
        named = ", ".join(f"P{k}" for k in ins)
        if len(in_channels) > len(ins):
            raise ConfigError(f"neck: {len(in_channels)} input maps, but graph {g.graph['name']!r} has only "
                             f"{len(ins)} levels with an input ({named}); use a graph with more levels "
                             f"(edg new bifpn --levels ...) or fewer maps")
        self.num_inputs = len(in_channels)
        fed = ins[: self.num_inputs]
        # Inputs the body does not give are made from its top map, one halving per level,
        # so they must be the levels right above the last one it gives.
        self.extra_levels = list(ins[self.num_inputs:])
        if self.extra_levels != list(range(fed[-1] + 1, fed[-1] + 1 + len(self.extra_levels))):
            raise ConfigError(f"neck: graph {g.graph['name']!r} takes inputs {named}; {len(in_channels)} maps feed "
                             f"{', '.join(f'P{k}' for k in fed)}, and the input adapter can make only the levels "
                             f"right above P{fed[-1]}, not {', '.join(f'P{k}' for k in self.extra_levels)}: give "
                             f"{len(ins)} maps")
        self.levels = list(output_levels(g))
        self.fed_levels = list(fed)
        opts = options or CompileOptions()
        self.out_channels = out_channels
        self.adapter = InputAdapter(in_channels[-1], self.extra_levels, out_channels, opts)
        cin = {level: (in_channels[i] if i < self.num_inputs else out_channels) for i, level in enumerate(ins)}
        self.fpn = compile_graph(g, out_channels, cin, opts)

    def forward(self, x: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        keys, feats = list(x.keys()), list(x.values())
        if len(feats) != self.num_inputs:
            raise ConfigError(f"neck: expected {self.num_inputs} feature maps, got {len(feats)} ({keys})")
        outs = self.fpn(*self.adapter(feats))
        # an output keeps the key of the map that fed its level; a level made inside is p{level}
        key_of = dict(zip(self.fed_levels, keys))
        names = [key_of.get(level, f"p{level}") for level in self.levels]
        return OrderedDict(zip(names, outs))


def neck(graph: nx.DiGraph | GraphSpec | str | os.PathLike, in_channels: Sequence[int], out_channels: int,
         repeat: int | None = None, fusion: str | None = None, options: CompileOptions | None = None) -> GraphNeck:
    """A graph (built-in name, path, ``GraphSpec`` or IR) as a detector neck.

    ``in_channels``: channels of the maps the body returns, lowest stride first; they
    feed the graph's lowest input levels, the rest of its inputs are made from the top
    map. A graph may take inputs with gaps (``inputs: [3, 5]``) and give outputs at
    other levels than its inputs; an output keeps the key of the map fed at its level,
    others are named ``p{level}``.
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
