"""Generators of the published topologies for any level range.

The YAML files in ``graphs/`` are the hand-written P3–P7 versions; the tests
check that these generators reproduce them, so each is a check on the other.
"""

from __future__ import annotations

from typing import Callable

from ..errors import PassError, RegistryError
from ..spec import Defaults, GraphSpec, InputRef, NodeSpec, input_name

__all__ = ["GENERATORS", "generate", "fpn", "panet", "bifpn", "qufpn", "nasfpn", "fully_connected", "gfpn",
           "log2n_sources"]

# The paper's ablation compares feature networks with the same ops ("separable
# convs everywhere"); only the weighting differs, so FPN and PANet use `sum`.
ABLATION = Defaults(fusion="sum", op="sep_conv", act="swish")
EFFICIENTDET = Defaults(fusion="fast_normalized", op="sep_conv", act="swish")


def _node(id: str, level: int, inputs: list[str | InputRef], **opts) -> NodeSpec:
    return NodeSpec(id=id, level=level, inputs=tuple(inputs), **opts)


def _spec(name, lo, hi, nodes, outputs, defaults, description) -> GraphSpec:
    return GraphSpec(
        name=name,
        description=description,
        levels=(lo, hi),
        defaults=defaults,
        nodes=tuple(nodes),
        outputs=dict(sorted(outputs.items())),
    )


def _check(lo: int, hi: int, fewest: int = 2) -> None:
    if hi - lo + 1 < fewest:
        raise PassError(f"levels {lo}-{hi}: this topology needs at least {fewest} levels")


def fpn(lo: int = 3, hi: int = 7) -> GraphSpec:
    """Top-down FPN: each level fuses its input with the level above."""
    _check(lo, hi)
    nodes = [_node(f"P{hi}_out", hi, [input_name(hi)])]
    nodes += [_node(f"P{k}_out", k, [input_name(k), f"P{k + 1}_out"]) for k in range(hi - 1, lo - 1, -1)]
    return _spec("fpn", lo, hi, nodes, {k: f"P{k}_out" for k in range(lo, hi + 1)}, ABLATION,
                 "Top-down FPN (Lin et al. 2017), EfficientDet ablation ops.")


def panet(lo: int = 3, hi: int = 7) -> GraphSpec:
    """FPN followed by a bottom-up path (PANet)."""
    _check(lo, hi)
    nodes = [_node(f"T{hi}", hi, [input_name(hi)])]
    nodes += [_node(f"T{k}", k, [input_name(k), f"T{k + 1}"]) for k in range(hi - 1, lo - 1, -1)]
    nodes += [_node(f"B{lo}", lo, [f"T{lo}"])]
    nodes += [_node(f"B{k}", k, [f"T{k}", f"B{k - 1}"]) for k in range(lo + 1, hi + 1)]
    return _spec("panet", lo, hi, nodes, {k: f"B{k}" for k in range(lo, hi + 1)}, ABLATION,
                 "PANet (Liu et al. 2018): top-down then bottom-up, EfficientDet ablation ops.")


def bifpn(lo: int = 3, hi: int = 7) -> GraphSpec:
    """One BiFPN layer (EfficientDet, Fig. 2d)."""
    _check(lo, hi)

    def td(k: int) -> str:
        return f"P{k}_td" if k != lo else f"P{lo}_out"

    nodes = []
    for k in range(hi - 1, lo - 1, -1):
        upper = input_name(hi) if k == hi - 1 else td(k + 1)
        nodes.append(_node(td(k), k, [input_name(k), upper]))
    for k in range(lo + 1, hi):
        nodes.append(_node(f"P{k}_out", k, [input_name(k), td(k), f"P{k - 1}_out"]))
    nodes.append(_node(f"P{hi}_out", hi, [input_name(hi), f"P{hi - 1}_out"]))
    return _spec("bifpn", lo, hi, nodes, {k: f"P{k}_out" for k in range(lo, hi + 1)}, EFFICIENTDET,
                 "BiFPN (Tan et al. 2020), one layer; EfficientDet repeats it D times.")


def qufpn(lo: int = 3, hi: int = 7) -> GraphSpec:
    """Quad-FPN: two top-down and two bottom-up paths, then a level-wise merge."""
    _check(lo, hi, fewest=3)
    nodes = []
    # Path 1, top-down from the inputs.
    for k in range(hi - 1, lo - 1, -1):
        nodes.append(_node(f"td1_{k}", k, [input_name(k), input_name(hi) if k == hi - 1 else f"td1_{k + 1}"]))
    # Path 2, bottom-up over path 1 (a BiFPN layer).
    for k in range(lo + 1, hi):
        nodes.append(_node(f"bu2_{k}", k, [input_name(k), f"td1_{k}", f"td1_{lo}" if k == lo + 1 else f"bu2_{k - 1}"]))
    nodes.append(_node(f"bu2_{hi}", hi, [input_name(hi), f"bu2_{hi - 1}"]))
    # Path 3, bottom-up from the inputs.
    for k in range(lo + 1, hi + 1):
        nodes.append(_node(f"bu3_{k}", k, [input_name(k), input_name(lo) if k == lo + 1 else f"bu3_{k - 1}"]))
    # Path 4, top-down over path 3.
    for k in range(hi - 1, lo, -1):
        nodes.append(_node(f"td4_{k}", k, [input_name(k), f"bu3_{k}", f"bu3_{hi}" if k == hi - 1 else f"td4_{k + 1}"]))
    nodes.append(_node(f"td4_{lo}", lo, [input_name(lo), f"td4_{lo + 1}"]))
    # Quad merge: the BiFPN half and the reversed half, level by level.
    for k in range(hi, lo - 1, -1):
        a = f"td1_{lo}" if k == lo else f"bu2_{k}"
        b = f"bu3_{hi}" if k == hi else f"td4_{k}"
        nodes.append(_node(f"P{k}_out", k, [a, b]))
    return _spec("qufpn", lo, hi, nodes, {k: f"P{k}_out" for k in range(lo, hi + 1)}, EFFICIENTDET,
                 "QuFPN (Quad-FPN): BiFPN plus a reversed bottom-up/top-down pair, merged per level.")


def nasfpn(lo: int = 3, hi: int = 7) -> GraphSpec:
    """The published NAS-FPN cell (Ghiasi et al. 2019, Fig. 6), defined for five levels."""
    if hi - lo != 4:
        raise PassError(f"nasfpn is the published 5-level cell; levels {lo}-{hi} span {hi - lo + 1}")
    p = {i: lo + i - 3 for i in range(3, 8)}  # P3..P7 of the paper, shifted to lo..hi

    def i(k: int) -> str:
        return input_name(p[k])

    bare = {"op": "identity"}  # a GP feeding a SUM has no conv of its own (mmdetection's cell)
    nodes = [
        _node("n1", p[4], [i(6), i(4)], fusion="gp"),
        _node("n2", p[4], ["n1", i(4)]),
        _node(f"P{p[3]}_out", p[3], ["n2", i(3)]),
        _node(f"P{p[4]}_out", p[4], [f"P{p[3]}_out", "n2"]),
        _node("gp5", p[5], [f"P{p[4]}_out", f"P{p[3]}_out"], fusion="gp", **bare),
        _node(f"P{p[5]}_out", p[5], [i(5), "gp5"]),
        _node("gp7", p[7], [f"P{p[5]}_out", "n2"], fusion="gp", **bare),
        _node(f"P{p[7]}_out", p[7], [i(7), "gp7"]),
        _node(f"P{p[6]}_out", p[6], [f"P{p[7]}_out", f"P{p[5]}_out"], fusion="gp"),
    ]
    defaults = Defaults(fusion="sum", op="act_conv_bn", act="relu")
    return _spec("nasfpn", lo, hi, nodes, {k: f"P{k}_out" for k in range(lo, hi + 1)}, defaults,
                 "NAS-FPN's published cell: merge cells of SUM / global-pool (GP), then ReLU-conv3x3-BN.")


def fully_connected(lo: int = 3, hi: int = 7) -> GraphSpec:
    """The paper's 'fully-connected FPN' (its edges are not published; this is our definition):
    the PANet layout in which every node also takes every node of the previous column."""
    _check(lo, hi)
    ins = [input_name(k) for k in range(hi, lo - 1, -1)]
    nodes = []
    for k in range(hi, lo - 1, -1):
        nodes.append(_node(f"T{k}", k, ins + ([f"T{k + 1}"] if k < hi else [])))
    tops = [f"T{k}" for k in range(hi, lo - 1, -1)]
    for k in range(lo, hi + 1):
        nodes.append(_node(f"B{k}", k, tops + ([f"B{k - 1}"] if k > lo else [])))
    return _spec("fully_connected", lo, hi, nodes, {k: f"B{k}" for k in range(lo, hi + 1)}, ABLATION,
                 "Fully-connected FPN: PANet's two columns, each node fed by every node of the column before.")


# GiraffeDet's neck: concatenation, then (act, 3x3 conv, BN); SiLU as the official configs.
GIRAFFEDET = Defaults(fusion="concat", op="act_conv_bn", act="silu")


def log2n_sources(layer: int) -> list[int]:
    """The earlier layers feeding ``layer`` by GFPN's log2(n)-link: layer - 2^k for
    k = 0, 1, ... while >= 0 (layer 0 = the inputs), farthest first as the paper's
    Concat(P^{l-2^n}, ..., P^{l-2^0}) lists them."""
    if layer < 1:
        raise PassError(f"log2n_sources: layer {layer} is not a GFPN layer (they count from 1)")
    sources: list[int] = []
    step = 1
    # ">= 0", the paper's formula: the inputs feed layers 1, 2, 4, 8, ... (the official code
    # feeds them to layer 1 only; docs/reference.md, "GFPN", lists this ambiguity)
    while layer - step >= 0:
        sources.append(layer - step)
        step *= 2
    return sources[::-1]


def gfpn(lo: int = 3, hi: int = 7, layers: int = 5) -> GraphSpec:
    """GiraffeDet's Generalized-FPN (Jiang et al., ICLR 2022): ``layers`` layers of one node
    per level, alternately top-down (layer 1) and bottom-up, as the official code builds them.

    Node ``L{l}_P{k}`` concatenates, in this order: the level-k nodes of layers l - 2^j
    (log2(n)-link, oldest first, layer 0 being the input ``P{k}_in``), then queen-fusion's
    diagonal neighbours from the previous layer (level k - 1, downsampled; level k + 1,
    upsampled), then the neighbour on the layer's own path (level k + 1 in a top-down
    layer, k - 1 in a bottom-up one). The outputs are the last layer's nodes."""
    _check(lo, hi)
    if layers < 1:
        raise PassError(f"gfpn: layers must be at least 1, got {layers}")

    def node(layer: int, k: int) -> str:
        return input_name(k) if layer == 0 else f"L{layer}_P{k}"

    nodes = []
    for layer in range(1, layers + 1):
        # layer 1 top-down as in the official code (the paper's Fig. 1 draws it bottom-up)
        top_down = layer % 2 == 1
        order = range(hi, lo - 1, -1) if top_down else range(lo, hi + 1)
        for k in order:
            ins = [node(src, k) for src in log2n_sources(layer)]
            ins += [node(layer - 1, j) for j in (k - 1, k + 1) if lo <= j <= hi]
            path = k + 1 if top_down else k - 1
            if lo <= path <= hi:
                ins.append(node(layer, path))
            nodes.append(_node(node(layer, k), k, ins))
    return _spec("gfpn", lo, hi, nodes, {k: node(layers, k) for k in range(lo, hi + 1)}, GIRAFFEDET,
                 f"GiraffeDet's GFPN, {layers} layers: queen-fusion and log2(n)-link, concatenation.")


GENERATORS: dict[str, Callable[[int, int], GraphSpec]] = {
    "fpn": fpn,
    "panet": panet,
    "bifpn": bifpn,
    "qufpn": qufpn,
    "nasfpn": nasfpn,
    "fully_connected": fully_connected,
    "gfpn": gfpn,
}


def generate(name: str, lo: int = 3, hi: int = 7) -> GraphSpec:
    """The topology ``name`` for input levels ``lo``..``hi``."""
    if name not in GENERATORS:
        raise RegistryError("topology generator", name, GENERATORS)
    return GENERATORS[name](lo, hi)
