"""IR → ``torch.fx.GraphModule``.

The fx graph is written directly from the IR, one statement per edge, fusion and
op, so the generated ``forward`` is the straight-line code a person would write.
Module paths follow node ids: the weights of node ``P6_td`` are under ``P6_td.``,
its edge from ``P7_in`` under ``P6_td.edges.P7_in.``.
"""

from __future__ import annotations

import keyword
import os
from typing import Mapping

import networkx as nx
import torch.fx as fx
from torch import nn

from ..graph import edge_option, input_levels, inputs_of, is_input, node_option, output_levels, topo_order, unroll
from ..ops import ACTIVATIONS, DOWNSAMPLERS, FUSIONS, NODE_OPS, UPSAMPLERS, CompileOptions
from ..ops.resample import Adapter, Downsample, Resample, halved_size
from ..passes import load_graph
from ..spec import input_name
from .shapes import channels_by_level

__all__ = ["compile_graph", "module_name"]

# Attribute names a node's module must not take: those of the module classes it
# lives in (``training``, ``graph``, ``code``...), Python keywords, and names made
# up by this file.
_RESERVED = (set(dir(fx.GraphModule)) | set(dir(nn.Module())) | set(vars(fx.GraphModule(nn.Module(), fx.Graph())))
             | {"meta", "graph", "code", "out_adapters", "edges", "fuse", "op"})


def module_name(node: str) -> str:
    """The attribute a node's (or edge source's) module lives under.

    Any node id maps to a safe, distinct attribute: ids that are keywords, taken
    by ``nn.Module``, private, or already start with ``n_`` get an ``n_`` prefix.
    Since every prefixed name starts with ``n_`` and no unprefixed one does, two
    ids never share an attribute (``to`` -> ``n_to``, ``n_to`` -> ``n_n_to``).
    """
    if node.startswith(("_", "n_")) or node in _RESERVED or keyword.iskeyword(node) or not node.isidentifier():
        return f"n_{node}"
    return node


class NodeBlock(nn.Module):
    """Holds one node's modules: ``edges`` (resampling per input), ``fuse``, ``op``."""


def _edge_module(
    src_level: int, dst_level: int, cin: int, cout: int, down: str, up: str, opts: CompileOptions
) -> nn.Module | None:
    adapter = Adapter(cin, cout, opts) if cin != cout else None
    if src_level < dst_level:
        steps = [DOWNSAMPLERS.get(down)(cout, opts) for _ in range(dst_level - src_level)]
        return Downsample(*([adapter] if adapter is not None else []), *steps)
    if src_level > dst_level:
        return Resample(adapter, UPSAMPLERS.get(up)(opts))
    return adapter


def compile_graph(
    graph: nx.DiGraph | str | os.PathLike,
    channels: int,
    in_channels: int | Mapping[int, int] | None = None,
    options: CompileOptions | None = None,
    class_name: str | None = None,
) -> fx.GraphModule:
    """Compile a graph (its ``repeat`` unrolled) into a module.

    ``forward(P{a}_in, P{b}_in, ...)`` takes one feature map per input level, in level
    order (with ``in_channels`` channels; sizes halving level by level, rounding up)
    and returns a tuple of the outputs from the lowest level to the highest, each with
    ``channels`` channels. A level without an input (a gap, or one above the highest
    input) has the lowest input's size halved once per level, ``(s - 1) // 2 + 1``:
    the size an image gives it, so no stand-in tensor is needed.
    """
    g = load_graph(graph) if isinstance(graph, (str, os.PathLike)) else graph
    opts = options or CompileOptions()
    u = unroll(g)
    lo, hi = u.graph["levels"]
    cin = channels_by_level(lo, hi, channels, in_channels)
    width = {v: (cin[u.nodes[v]["level"]] if is_input(u, v) else channels) for v in u}

    root = nn.Module()
    fg = fx.Graph()
    env: dict[str, fx.Node] = {}
    ins = input_levels(u)
    for k in ins:
        env[input_name(k)] = fg.create_node("placeholder", input_name(k), name=input_name(k))
    sizes: dict[int, fx.Node] = {}

    def size_of(level: int) -> fx.Node:
        """What an edge going up to ``level`` interpolates to: the level's input, else its size."""
        if input_name(level) in env:
            return env[input_name(level)]
        if level not in sizes:
            sizes[level] = fg.create_node("call_function", halved_size, (env[input_name(ins[0])], level - ins[0]),
                                          name=f"P{level}_size")
        return sizes[level]

    for v in topo_order(u):
        if is_input(u, v):
            continue
        mv, level = module_name(v), u.nodes[v]["level"]
        block, edges = NodeBlock(), nn.Module()
        args = []
        for s in inputs_of(u, v):
            slevel = u.nodes[s]["level"]
            mod = _edge_module(
                slevel, level, width[s], channels,
                edge_option(u, s, v, "downsample"), edge_option(u, s, v, "upsample"), opts,
            )
            if mod is None:
                args.append(env[s])
                continue
            edges.add_module(module_name(s), mod)
            # Going up, the level's input tensor gives the exact size to reach.
            call_args = (env[s], size_of(level)) if slevel > level else (env[s],)
            args.append(fg.create_node("call_module", f"{mv}.edges.{module_name(s)}", call_args, name=f"{v}_from_{s}"))
        if len(edges._modules):
            block.edges = edges
        x = args[0]
        if len(args) > 1:
            block.fuse = FUSIONS.get(node_option(u, v, "fusion"))(len(args), channels, opts)
            x = fg.create_node("call_module", f"{mv}.fuse", tuple(args), name=f"{v}_fused")
        op = node_option(u, v, "op")
        if op != "identity":
            block.op = NODE_OPS.get(op)(channels, ACTIVATIONS.get(node_option(u, v, "act"))(), opts)
            x = fg.create_node("call_module", f"{mv}.op", (x,), name=v)
        env[v] = x
        root.add_module(mv, block)

    outputs = []
    for k in output_levels(u):
        node = u.graph["outputs"][k]
        x = env[node]
        if is_input(u, node) and width[node] != channels:
            # an input passed straight through (after prune_single_input) still
            # leaves with the network's width
            if not hasattr(root, "out_adapters"):
                root.out_adapters = nn.Module()
            root.out_adapters.add_module(f"P{k}", Adapter(width[node], channels, opts))
            x = fg.create_node("call_module", f"out_adapters.P{k}", (x,), name=f"P{k}_adapted")
        outputs.append(x)
    fg.output(tuple(outputs))
    fg.lint()
    name = class_name or "".join(p.capitalize() for p in str(g.graph["name"]).split("_")) or "FeatureNetwork"
    gm = fx.GraphModule(root, fg, class_name=name)
    gm.meta["edg"] = {"levels": (lo, hi), "inputs": ins, "outputs": output_levels(u), "channels": channels,
                      "in_channels": cin, "graph": g.graph["name"]}
    return gm
