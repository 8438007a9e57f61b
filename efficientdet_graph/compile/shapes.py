"""Shapes before tensors: every node's (channels, height, width) from the spec alone.

Sizes follow the official rule at every level: a level's size is the one below it
halved, rounding up, ``(s - 1) // 2 + 1``. Input sizes that 2**max_level does not
divide are therefore accepted; the pyramid just has odd sizes somewhere, and
upsampling interpolates to the exact size of the destination level.
"""

from __future__ import annotations

from typing import Mapping

import networkx as nx

from ..errors import ShapeError  # defined in errors.py, re-exported here
from ..graph import is_input, output_levels, topo_order, unroll

__all__ = ["ShapeError", "level_size", "level_sizes", "channels_by_level", "infer_shapes", "output_shapes"]



def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(h, int) and isinstance(w, int)) or h < 1 or w < 1:
        raise ShapeError(f"input size must be positive integers, got {size!r}")
    return h, w


def level_size(size: int | tuple[int, int], level: int) -> tuple[int, int]:
    """Spatial size of pyramid level ``level`` for an image of ``size`` (level 0)."""
    h, w = _hw(size)
    for _ in range(level):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h, w


def level_sizes(size: int | tuple[int, int], lo: int, hi: int) -> dict[int, tuple[int, int]]:
    return {k: level_size(size, k) for k in range(lo, hi + 1)}


def channels_by_level(lo: int, hi: int, channels: int, in_channels: int | Mapping[int, int] | None) -> dict[int, int]:
    """Input channels per level: one number for all, a mapping (levels it lacks get
    ``channels``), or None (all ``channels``)."""
    if channels < 1:
        raise ShapeError(f"channels must be >= 1, got {channels}")
    if in_channels is None:
        return {k: channels for k in range(lo, hi + 1)}
    if isinstance(in_channels, int):
        return {k: in_channels for k in range(lo, hi + 1)}
    extra = sorted(set(in_channels) - set(range(lo, hi + 1)))
    if extra:
        raise ShapeError(f"in_channels given for level(s) {extra} outside the graph's levels [{lo}, {hi}]")
    return {k: int(in_channels.get(k, channels)) for k in range(lo, hi + 1)}


def infer_shapes(
    graph: nx.DiGraph,
    channels: int,
    input_size: int | tuple[int, int],
    in_channels: int | Mapping[int, int] | None = None,
) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of every node of the unrolled graph, for one image of ``input_size``."""
    u = unroll(graph)
    lo, hi = u.graph["levels"]
    cin = channels_by_level(lo, hi, channels, in_channels)
    sizes = level_sizes(input_size, lo, hi)
    shapes = {}
    for v in topo_order(u):
        level = u.nodes[v]["level"]
        c = cin[level] if is_input(u, v) else channels
        shapes[v] = (c, *sizes[level])
    return shapes


def output_shapes(
    graph: nx.DiGraph,
    channels: int,
    input_size: int | tuple[int, int],
    in_channels: int | Mapping[int, int] | None = None,
) -> dict[int, tuple[int, int, int]]:
    """(C, H, W) of each output level; outputs always have ``channels`` channels."""
    lo, hi = graph.graph["levels"]
    channels_by_level(lo, hi, channels, in_channels)  # validates the channel arguments
    sizes = level_sizes(input_size, lo, hi)
    return {k: (channels, *sizes[k]) for k in output_levels(graph)}


