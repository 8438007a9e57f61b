"""Counting without building: parameters and FLOPs from the graph IR and shapes alone.

``graph_cost`` gives what ``compile_graph`` would build, ``model_cost`` a whole
detector, with the same conventions as ``counter`` (multiply-adds, fvcore's rules:
a convolution batch * C_out * C_in / groups * k_h * k_w * H_out * W_out, an eval-mode
batch norm 2 per element, nearest upsampling 1 and bilinear 4 per output element,
everything else 0). No module and no tensor is made, except:

- the backbone, a timm network with no IR, counted once per (backbone, image size)
  on the meta device and kept in a small JSON cache on disk (``cache_dir()``) and in
  memory;
- a fusion, op, resampler or activation that was registered without a formula here:
  that one module is built and counted on the meta device (memoized by its shapes).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import networkx as nx

from .._io import atomic_write_text
from ..compile import channels_by_level, level_sizes, module_name
from ..errors import EdgError, PassError, RegistryError, SpecError
from ..graph import input_levels, inputs_of, is_input, layer_name, topo_order
from ..ops import ACTIVATIONS, DOWNSAMPLERS, FUSIONS, NODE_OPS, UPSAMPLERS, CompileOptions
from ..spec import MAX_NODES, ModelSpec, SourceMap, input_name

__all__ = ["Cost", "FeatureInputs", "feature_inputs", "graph_cost", "model_cost", "backbone_cost", "cache_dir", "COST_RULES"]

HW = tuple[int, int]


@dataclass(frozen=True)
class Cost:
    """Parameters and FLOPs (multiply-adds) of a feature network or a detector.

    ``components``: backbone, adapter, fpn, class_net, box_net (``model_cost`` only);
    ``nodes``: per graph node (keyed like the compiled module's children), each
    holding its edges' resampling, its fusion and its op. Output adapters (an input
    passed straight out with other channels) count in the total, not in ``nodes``.
    """

    params: int
    flops: int
    components: dict[str, dict[str, int]] = field(default_factory=dict)
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class _Acc:
    """Running totals; ``bn`` counts batch-norm channels (the TF code's redundant biases)."""

    __slots__ = ("params", "flops", "bn")

    def __init__(self) -> None:
        self.params = self.flops = self.bn = 0

    def conv(self, cin: int, cout: int, k: int, hw: HW, groups: int = 1, bias: bool = False) -> None:
        w = cout * (cin // groups) * k * k
        self.params += w + (cout if bias else 0)
        self.flops += w * hw[0] * hw[1]

    def bn_(self, c: int, hw: HW) -> None:
        self.params += 2 * c
        self.flops += 2 * c * hw[0] * hw[1]
        self.bn += c

    def add(self, params: int, flops: int, bn: int = 0) -> None:
        self.params += params
        self.flops += flops
        self.bn += bn


def _half(hw: HW) -> HW:
    return (hw[0] - 1) // 2 + 1, (hw[1] - 1) // 2 + 1


# Formulas for the registered built-ins, one per (kind, name). Arguments:
# fusion (acc, n, c, hw); op (acc, c, hw), the activation counted apart;
# downsample (acc, c, out_hw) for one halving; upsample (acc, c, out_hw); act (acc, c, hw).
def _sep_conv(a: _Acc, c: int, hw: HW) -> None:
    a.conv(c, c, 3, hw, groups=c)
    a.conv(c, c, 1, hw)
    a.bn_(c, hw)


def _conv3_bn(a: _Acc, c: int, hw: HW) -> None:
    a.conv(c, c, 3, hw)
    a.bn_(c, hw)


def _concat(a: _Acc, n: int, c: int, hw: HW) -> None:
    a.conv(n * c, c, 1, hw)
    a.bn_(c, hw)


def _nothing(a: _Acc, *args) -> None:
    pass


COST_RULES: dict[str, dict[str, Callable]] = {
    "fusion": {
        "sum": _nothing,
        "gp": _nothing,  # mean, sigmoid, multiply, add: 0 under fvcore's rules
        "softmax": lambda a, n, c, hw: a.add(n, 0),
        "fast_normalized": lambda a, n, c, hw: a.add(n, 0),
        "channel_softmax": lambda a, n, c, hw: a.add(n * c, 0),
        "channel_fast_normalized": lambda a, n, c, hw: a.add(n * c, 0),
        "concat": _concat,
    },
    "op": {"sep_conv": _sep_conv, "conv_bn_act": _conv3_bn, "act_conv_bn": _conv3_bn, "identity": _nothing},
    "downsample": {"max_pool": _nothing, "avg_pool": _nothing, "conv": _conv3_bn},
    "upsample": {
        "nearest": lambda a, c, hw: a.add(0, c * hw[0] * hw[1]),
        "bilinear": lambda a, c, hw: a.add(0, 4 * c * hw[0] * hw[1]),
    },
    "act": {"swish": _nothing, "silu": _nothing, "relu": _nothing, "relu6": _nothing, "none": _nothing},
}
"""How each registered name is counted; a name registered without an entry here is
measured instead (its module built and counted on the meta device)."""

# ops whose module applies the node's activation once (the others get none)
_OPS_WITH_ACT = {"sep_conv", "conv_bn_act", "act_conv_bn"}

_MEASURED: dict[tuple, tuple[int, int, int]] = {}


def _measure(key: tuple, make: Callable, shapes: list[tuple[int, ...]]) -> tuple[int, int, int]:
    """(params, FLOPs, BN channels) of the module ``make()`` run on meta tensors."""
    if key not in _MEASURED:
        import torch

        from .counter import count_flops, count_params

        with torch.device("meta"):
            m = make().eval()
        xs = tuple(torch.empty(1, *s, device="meta") for s in shapes)
        flops = count_flops(m, xs).total
        bn = sum(b.num_features for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))
        _MEASURED[key] = (count_params(m), flops, bn)
    return _MEASURED[key]


def _fusion(a: _Acc, name: str, n: int, c: int, hw: HW, opts: CompileOptions) -> None:
    rule = COST_RULES["fusion"].get(name)
    if rule is not None:
        return rule(a, n, c, hw)
    factory = FUSIONS.get(name)
    a.add(*_measure(("fusion", name, n, c, hw, opts), lambda: factory(n, c, opts), [(c, *hw)] * n))


def _act(a: _Acc, name: str, c: int, hw: HW) -> None:
    rule = COST_RULES["act"].get(name)
    if rule is not None:
        return rule(a, c, hw)
    factory = ACTIVATIONS.get(name)
    a.add(*_measure(("act", name, c, hw), factory, [(c, *hw)]))


def _op(a: _Acc, name: str, act: str, c: int, hw: HW, opts: CompileOptions) -> None:
    rule = COST_RULES["op"].get(name)
    if rule is not None:
        rule(a, c, hw)
        if name in _OPS_WITH_ACT:
            _act(a, act, c, hw)
        return
    factory, act_factory = NODE_OPS.get(name), ACTIVATIONS.get(act)
    a.add(*_measure(("op", name, act, c, hw, opts), lambda: factory(c, act_factory(), opts), [(c, *hw)]))


def _down(a: _Acc, name: str, c: int, hw: HW, opts: CompileOptions) -> HW:
    """One halving of a (c, *hw) map; returns the new size."""
    out = _half(hw)
    rule = COST_RULES["downsample"].get(name)
    if rule is not None:
        rule(a, c, out)
        return out
    factory = DOWNSAMPLERS.get(name)
    a.add(*_measure(("downsample", name, c, hw, opts), lambda: factory(c, opts), [(c, *hw)]))
    return out


def _up(a: _Acc, name: str, c: int, hw: HW, out: HW, opts: CompileOptions) -> None:
    rule = COST_RULES["upsample"].get(name)
    if rule is not None:
        return rule(a, c, out)
    factory = UPSAMPLERS.get(name)
    # an upsampler's forward(x, like): ``like``, a map of the destination level, gives the size
    a.add(*_measure(("upsample", name, c, hw, out, opts), lambda: factory(opts), [(c, *hw), (1, *out)]))


def _node_cost(level: int, srcs: list[tuple[int, int, str, str]], fusion: str, op: str, act: str,
               channels: int, sizes: Mapping[int, HW], opts: CompileOptions) -> tuple[int, int, int]:
    """One node as ``compile_graph`` builds it: per edge an adapter where channels
    differ, then one halving per level down or an interpolation up; fusion; op."""
    a, hw = _Acc(), sizes[level]
    for slevel, width, down, up in srcs:
        shw = sizes[slevel]
        if width != channels:  # 1x1 conv + BN adapter, at the source's size
            a.conv(width, channels, 1, shw)
            a.bn_(channels, shw)
        if slevel < level:
            for _ in range(level - slevel):
                shw = _down(a, down, channels, shw, opts)
        elif slevel > level:
            _up(a, up, channels, shw, hw, opts)
    if len(srcs) > 1:
        _fusion(a, fusion, len(srcs), channels, hw, opts)
    _op(a, op, act, channels, hw, opts)
    return a.params, a.flops, a.bn


def _feature_network(g: nx.DiGraph, channels: int, cin: Mapping[int, int], sizes: Mapping[int, HW],
                     opts: CompileOptions) -> tuple[_Acc, dict[str, dict[str, int]]]:
    """``g``'s ``repeat`` layers walked one after the other, as ``unroll`` chains them
    (layer k's outputs feed layer k + 1), without copying the graph; a node's cost
    depends only on its sources' widths, so layers after the first are counted once."""
    n = g.graph.get("repeat", 1)
    order = [v for v in topo_order(g) if not is_input(g, v)]
    if n > 1 and len(order) * n > MAX_NODES:
        raise PassError(f"repeating {len(order)} nodes {n} times exceeds the limit of {MAX_NODES} nodes")
    defaults = g.graph["defaults"]
    plan = []
    for v in order:
        data = g.nodes[v]
        srcs = []
        for s in inputs_of(g, v):
            e = g.edges[s, v]
            srcs.append((s, g.nodes[s]["level"], e.get("downsample") or defaults["downsample"],
                         e.get("upsample") or defaults["upsample"]))
        plan.append((v, data["level"], srcs, data.get("fusion") or defaults["fusion"],
                     data.get("op") or defaults["op"], data.get("act") or defaults["act"]))
    outputs = g.graph["outputs"]
    total, nodes = _Acc(), {}
    feed = {level: cin[level] for level in input_levels(g)}  # width of what enters each level
    memo: dict[tuple, tuple[int, int, int]] = {}
    for k in range(1, n + 1):
        width = {input_name(level): w for level, w in feed.items()}
        for v, level, srcs, fusion, op, act in plan:
            ins = [(slevel, width[s], down, up) for s, slevel, down, up in srcs]
            key = (v, tuple(w for _, w, _, _ in ins))
            if key not in memo:
                memo[key] = _node_cost(level, ins, fusion, op, act, channels, sizes, opts)
            params, flops, bn = memo[key]
            nodes[module_name(layer_name(k, v) if n > 1 else v)] = {"params": params, "flops": flops}
            total.add(params, flops, bn)
            width[v] = channels
        feed = {level: width[node] for level, node in outputs.items()}  # outputs == inputs where n > 1
    for level, w in feed.items():  # an input passed straight out leaves with the network's width
        if w != channels:
            total.conv(w, channels, 1, sizes[level])
            total.bn_(channels, sizes[level])
    return total, nodes


def graph_cost(
    graph: nx.DiGraph,
    channels: int,
    in_channels: int | Mapping[int, int] | None,
    image_size: int | tuple[int, int],
    options: CompileOptions | None = None,
) -> Cost:
    """Parameters and FLOPs of ``compile_graph(graph, channels, in_channels, options)``
    run on one image of ``image_size`` (its inputs at the pyramid's sizes), from the
    graph alone: equal to ``count_params`` and fvcore's count of the compiled module."""
    if isinstance(graph, (str, os.PathLike)):
        from ..passes import load_graph

        graph = load_graph(graph)
    lo, hi = graph.graph["levels"]
    cin = channels_by_level(lo, hi, channels, in_channels)
    acc, nodes = _feature_network(graph, channels, cin, level_sizes(image_size, lo, hi), options or CompileOptions())
    return Cost(acc.params, acc.flops, {}, nodes)


# ---------------------------------------------------------------- the backbone

_FORMAT = "efficientdet-graph/backbone-costs/1"
_MEMORY: dict[str, dict] = {}
_VERSIONS: dict[str, str] = {}


def cache_dir() -> Path:
    """Where backbone counts are kept: ``$EDG_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/efficientdet-graph``, else ``~/.cache/efficientdet-graph``."""
    if os.environ.get("EDG_CACHE_DIR"):
        return Path(os.environ["EDG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "efficientdet-graph"


def _versions() -> dict[str, str]:
    # the counts depend on timm's definition of the network (and torch's ops)
    if not _VERSIONS:
        from importlib.metadata import version

        _VERSIONS.update(timm=version("timm"), torch=version("torch"))
    return _VERSIONS


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != _FORMAT or data.get("versions") != _versions():
            return {}
        entries = data["entries"]
        return {k: v for k, v in entries.items() if isinstance(v, dict)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # missing or corrupt: counted again and rewritten


def _count_backbone(name: str, hw: HW) -> dict:
    import torch

    from ..model.backbone import create_body
    from .counter import count_flops, count_params

    with torch.device("meta"):
        body = create_body(name).eval()
    shapes: list[list[int]] = []

    def keep(module, args, out) -> None:
        shapes.extend([list(t.shape[1:]) for t in out])

    handle = body.register_forward_hook(keep)
    try:
        flops = count_flops(body, (torch.empty(1, 3, *hw, device="meta"),)).total
    finally:
        handle.remove()
    info = body.feature_info
    return {"params": count_params(body), "flops": flops, "reductions": list(info.reduction()),
            "channels": list(info.channels()), "shapes": shapes}


def backbone_cost(name: str, image_size: int | tuple[int, int]) -> dict:
    """The timm backbone ``name`` at ``image_size``: params, FLOPs, its features'
    reductions, channels and (C, H, W) shapes. Counted once on the meta device, then
    read from memory or from ``cache_dir()/backbones.json``."""
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    key = f"{name}@{hw[0]}x{hw[1]}"
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_dir() / "backbones.json"
    cached = _read_cache(path)
    if key not in cached:
        cached[key] = _count_backbone(name, hw)
        cached.update({k: v for k, v in _read_cache(path).items() if k != key})  # another process's new entries
        try:
            atomic_write_text(path, json.dumps({"format": _FORMAT, "versions": _versions(), "entries": cached},
                                               indent=1, sort_keys=True))
        except OSError:
            pass  # a read-only cache directory only costs speed
    _MEMORY.update(cached)
    return _MEMORY[key]


# ---------------------------------------------------------------- the detector


def _head(a: _Acc, c: int, repeats: int, outputs: int, sizes: list[HW], levels: int) -> None:
    a.add(repeats * (9 * c + c * c) + 9 * c + c * outputs + outputs, 0)
    a.add(repeats * levels * 2 * c, 0, repeats * c)  # a BN per level; one redundant TF bias per shared conv
    for h, w in sizes:
        a.add(0, (repeats * (9 * c + c * c + 2 * c) + 9 * c + c * outputs) * h * w)


@dataclass(frozen=True)
class FeatureInputs:
    """What a detector's feature network is counted from: its graph (``fpn_repeat``
    layers), width, the backbone's real channels at the levels the backbone gives (the
    input adapter makes the levels above at the network's width), and the image size."""

    graph: nx.DiGraph
    channels: int
    in_channels: dict[int, int]
    image_size: HW


def feature_inputs(spec_or_name: ModelSpec | str | os.PathLike, image_size: int | tuple[int, int] | None = None,
                   **overrides) -> FeatureInputs:
    """``graph_cost(f.graph, f.channels, f.in_channels, f.image_size)`` is the ``fpn``
    component of ``model_cost``; change the graph's repeat or the width to count the same
    detector at another scale (``search.compare.matched_scale``). ``overrides`` replace
    spec fields as ``create_model``'s do (``graph="fpn"``)."""
    from ..model.build import feature_graph

    spec, graph, hw, _, _, _, bb_channels = _resolved(spec_or_name, image_size, overrides)
    return FeatureInputs(feature_graph(spec, graph), spec.fpn_channels, dict(bb_channels), hw)


def _resolved(spec_or_name: ModelSpec | str | os.PathLike, image_size: int | tuple[int, int] | None,
              overrides: dict | None = None) -> tuple:
    from ..model.backbone import pick_levels
    from ..model.build import load_model_spec, model_graph
    from ..scale import resolve

    if isinstance(spec_or_name, ModelSpec):
        spec, src, base = spec_or_name, None, None
    else:
        spec, src, path = load_model_spec(spec_or_name)
        base = path.parent
    if overrides:  # as create_model applies them: a graph path stays relative to the spec's folder
        spec = ModelSpec.model_validate({**spec.model_dump(exclude_unset=True), **overrides})
    spec = resolve(spec)
    where = src or SourceMap(f"<{spec.name}>")
    if spec.head_channels != spec.fpn_channels:
        raise SpecError.single(f"<{spec.name}>", "head_channels must equal fpn_channels (heads read the pyramid)")
    graph = model_graph(spec, src, base)
    size = image_size or spec.image_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    lo, hi = graph.graph["levels"]
    try:
        bb = backbone_cost(spec.backbone.name, hw)
        levels, indices, bb_channels = pick_levels(spec.backbone.name, bb["reductions"], bb["channels"], range(lo, hi + 1))
    except RegistryError as e:
        raise SpecError([where.problem(("backbone", "name"), str(e))]) from None
    except ValueError as e:
        if isinstance(e, EdgError):
            raise
        raise SpecError([where.problem(("backbone",), str(e))]) from None
    return spec, graph, hw, bb, levels, indices, bb_channels


def _model(spec_or_name: ModelSpec | str | os.PathLike, image_size: int | tuple[int, int] | None
           ) -> tuple[str, HW, Cost, int]:
    from ..model.build import feature_graph

    spec, graph, hw, bb, levels, indices, bb_channels = _resolved(spec_or_name, image_size)
    lo, hi = graph.graph["levels"]
    opts = CompileOptions(bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum, padding=spec.padding)
    C = spec.fpn_channels
    sizes: dict[int, HW] = {lvl: tuple(bb["shapes"][i][1:]) for lvl, i in zip(levels, indices)}
    adapter, top = _Acc(), levels[-1]
    cin = bb_channels[top]
    for level in range(top + 1, hi + 1):  # InputAdapter: 1x1 conv + BN where channels differ, max-pool
        if cin != C:
            adapter.conv(cin, C, 1, sizes[level - 1])
            adapter.bn_(C, sizes[level - 1])
        sizes[level] = _half(sizes[level - 1])
        cin = C
    in_channels = {level: bb_channels.get(level, C) for level in range(lo, hi + 1)}
    fpn, nodes = _feature_network(feature_graph(spec, graph), C, in_channels, sizes, opts)
    per_position = spec.anchors.num_scales * len(spec.anchors.aspect_ratios)
    heads = {}
    for name, outputs in (("class_net", spec.num_classes), ("box_net", 4)):
        heads[name] = _Acc()
        _head(heads[name], spec.head_channels, spec.head_repeat, per_position * outputs,
              [sizes[k] for k in range(lo, hi + 1)], hi - lo + 1)
    parts = {"backbone": (bb["params"], bb["flops"]), "adapter": (adapter.params, adapter.flops),
             "fpn": (fpn.params, fpn.flops), **{k: (h.params, h.flops) for k, h in heads.items()}}
    components = {k: {"params": p, "flops": f} for k, (p, f) in parts.items()}
    cost = Cost(sum(p for p, _ in parts.values()), sum(f for _, f in parts.values()), components, nodes)
    return spec.name, hw, cost, adapter.bn + fpn.bn + sum(h.bn for h in heads.values())


def model_cost(spec_or_name: ModelSpec | str | os.PathLike, image_size: int | tuple[int, int] | None = None) -> Cost:
    """Parameters and FLOPs of the detector a spec (or built-in name, or spec file)
    describes, at ``image_size`` (default: the spec's), per component and per feature
    node, without building it: the backbone from the cache (``backbone_cost``), the
    input adapter, feature network and heads from their formulas."""
    return _model(spec_or_name, image_size)[2]
