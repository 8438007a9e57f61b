"""From a point of a space to a candidate: a graph spec that goes through the same
validation and passes as a hand-written one.

A mapping asks for parameters through ``ask`` as it needs them (define-by-run), so
the same code samples at random, replays a fixed point, or follows an Optuna trial.
A point that breaks a graph rule (a fusion's arity, a node left without inputs, a node
that reaches no output...) gives a *rejected* candidate with the reason, never an
exception.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from ..errors import EdgError, SearchError
from ..graph import canonical_hash, check_spec
from ..passes import load_graph, run_pass
from ..spec import GraphSpec, NodeSpec, SourceMap, input_name
from ..spec.builtin import resolve_ref
from .params import Ask, Choice, RecordingAsk, fixed_ask
from .space import CellsSpec, ScalingSpec, SearchSpace, default_output_levels

__all__ = ["Candidate", "sample", "point_values", "point_candidate", "BOOL"]

BOOL = Choice((False, True))


@dataclass(frozen=True)
class Candidate:
    """A sampled architecture: its parameters, its graph (one layer, ``repeat`` 1) and the
    scale it is trained and counted at; or the reason it was rejected."""

    params: dict[str, Any]
    graph: nx.DiGraph | None
    reason: str | None = None
    repeat: int = 1
    channels: int = 64
    image_size: int = 512
    width_scale: float = 1.0  # relative to the space's reference width (scaling spaces)
    size_scale: float = 1.0
    passes: tuple[str, ...] = field(default=())

    @property
    def rejected(self) -> bool:
        return self.graph is None

    @property
    def key(self) -> str:
        """Equal for candidates that are the same network at the same scale (names ignored)."""
        if self.graph is None:
            raise SearchError("a rejected candidate has no structure")
        text = f"{canonical_hash(self.graph, ops=True)}|{self.repeat}|{self.channels}|{self.image_size}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def stacked(self) -> nx.DiGraph:
        """The graph with ``repeat`` set to the candidate's depth (what is trained and counted)."""
        g = self.graph.copy()
        g.graph = {**self.graph.graph, "outputs": dict(self.graph.graph["outputs"]), "repeat": self.repeat}
        return g


def sample(space: SearchSpace, ask: Ask) -> Candidate:
    """The candidate at the point ``ask`` answers."""
    rec = ask if isinstance(ask, RecordingAsk) else RecordingAsk(ask)
    kind = space.spec.kind
    scale: dict[str, Any] = {}
    if kind == "edges":
        gspec, passes, reason = _edges(space, rec)
    elif kind == "cells":
        gspec, passes, reason = _cells(space, rec)
    else:
        gspec, passes, reason, scale = _scaling(space, rec)
    cost = space.spec.cost
    common = dict(repeat=scale.get("repeat", space.spec.repeat), channels=scale.get("channels", cost.channels),
                  image_size=scale.get("image_size", cost.image_size), width_scale=scale.get("width_scale", 1.0),
                  size_scale=scale.get("size_scale", 1.0), passes=tuple(passes))
    if reason is not None:
        return Candidate(dict(rec.values), None, reason, **common)
    graph, reason = _graph(gspec, passes) if isinstance(gspec, GraphSpec) else (gspec, None)
    return Candidate(dict(rec.values), graph, reason, **common)


def _graph(gspec: GraphSpec, passes: list[str]) -> tuple[nx.DiGraph | None, str | None]:
    g, problems = check_spec(gspec, SourceMap(f"<{gspec.name}>"))
    if problems:
        return None, "; ".join(p.message for p in problems[:3]) + (" ..." if len(problems) > 3 else "")
    for name in passes:
        try:
            g, _ = run_pass(g, name)
        except EdgError as e:
            return None, f"pass {name}: {e}"
    return g, None


def _ask_declared(space: SearchSpace, ask: Ask) -> dict[str, Any]:
    """The space's declared parameters, in order, each only when its condition holds."""
    values: dict[str, Any] = {}
    for name, p in space.spec.params.items():
        cond = space.condition(p.when)
        if cond is None or cond.holds(values):
            values[name] = ask(name, space.distributions[name])
    return values


def _edges(space: SearchSpace, ask: Ask):
    spec = space.spec
    lo, hi = spec.levels
    values = _ask_declared(space, ask)
    present: dict[str, int] = {input_name(k): k for k in range(lo, hi + 1)}
    nodes = []
    for node in spec.nodes:
        cond = space.condition(node.when)
        if cond is not None and not cond.holds(values):
            continue
        ins = [s for s in node.inputs if s in present]
        for s in node.optional:
            if s in present and ask(f"edge.{node.id}.{s}", BOOL):
                ins.append(s)
        if not ins:
            return None, [], f"node {node.id} is present but none of its inputs is"
        opts: dict[str, str] = {}
        if len(ins) >= 2 and spec.choices.get("fusion"):
            opts["fusion"] = ask(f"fusion.{node.id}", Choice(spec.choices["fusion"]))
        if spec.choices.get("op"):
            opts["op"] = ask(f"op.{node.id}", Choice(spec.choices["op"]))
        if node.act:
            opts["act"] = node.act
        nodes.append(NodeSpec(id=node.id, level=node.level, inputs=tuple(ins), **opts))
        present[node.id] = node.level
    outputs = {}
    for level in range(lo, hi + 1):
        names = spec.outputs[level]
        names = (names,) if isinstance(names, str) else names
        chosen = next((n for n in names if n in present), None)
        if chosen is None:
            return None, [], f"no node for output P{level} is present (one of {', '.join(names)})"
        outputs[level] = chosen
    passes = [s.name for s in spec.passes if space.condition(s.when) is None or space.condition(s.when).holds(values)]
    gspec = GraphSpec(name=spec.name, description=f"a point of search space {spec.name!r}", levels=(lo, hi),
                      defaults=spec.defaults, nodes=tuple(nodes), outputs=outputs)
    return gspec, passes, None


def _cells(space: SearchSpace, ask: Ask):
    """NAS-FPN (Ghiasi et al. 2019, Sec. 3): the candidate pool starts as the input
    levels; each merging cell picks two different members of the pool, an output level
    and a binary op, and adds its output to the pool. The last cells are the outputs
    (levels fixed, NAS-FPN's order); every cell no other cell consumed is summed into
    the output of its level."""
    spec = space.spec
    cells: CellsSpec = spec.cells or CellsSpec()
    lo, hi = spec.levels
    levels = list(range(lo, hi + 1))
    outs = list(cells.output_levels or default_output_levels(lo, hi))
    _ask_declared(space, ask)
    n = ask("cells", _int(cells.min, cells.max))
    pool: list[tuple[str, int]] = [(input_name(k), k) for k in levels]
    made: list[dict] = []
    for i in range(n):
        size = len(pool)
        first = ask(f"cell{i}.in1", Choice(tuple(range(size))))
        offset = ask(f"cell{i}.in2", Choice(tuple(range(1, size))))
        second = (first + offset) % size
        out_index = i - (n - len(outs))
        level = outs[out_index] if out_index >= 0 else ask(f"cell{i}.level", Choice(tuple(levels)))
        op = ask(f"cell{i}.op", Choice(cells.ops))
        made.append({"id": f"c{i}", "level": level, "inputs": (pool[first][0], pool[second][0]), "fusion": op})
        pool.append((f"c{i}", level))
    consumed = {src for cell in made for src in cell["inputs"]}
    output_cells = {outs[j]: made[n - len(outs) + j]["id"] for j in range(len(outs))}
    leftovers: dict[int, list[str]] = {}
    for cell in made[: n - len(outs)]:
        if cell["id"] not in consumed:
            leftovers.setdefault(cell["level"], []).append(cell["id"])
    nodes = [NodeSpec(**c) for c in made]
    outputs = {}
    for level in levels:
        if leftovers.get(level):
            nodes.append(NodeSpec(id=f"P{level}_out", level=level, inputs=(output_cells[level], *leftovers[level]),
                                  fusion="sum", op="identity"))
            outputs[level] = f"P{level}_out"
        else:
            outputs[level] = output_cells[level]
    gspec = GraphSpec(name=spec.name, description=f"a point of search space {spec.name!r}", levels=(lo, hi),
                      defaults=spec.defaults, nodes=tuple(nodes), outputs=outputs)
    return gspec, [], None


def _int(low: int, high: int):
    from .params import IntRange

    return IntRange(low, high)


def _scaling(space: SearchSpace, ask: Ask):
    """EfficientDet's compound scaling (Sec. 4.2) with the rules as parameters:
    width W = base_width * width_factor^phi (to a multiple of 8), depth
    D = base_depth + floor(depth_step * phi), resolution R = base + resolution_step * phi."""
    spec = space.spec
    sc: ScalingSpec = spec.scaling or ScalingSpec()
    values = _ask_declared(space, ask)
    phi = sc.phi
    width = max(8, int(round(sc.base_channels * float(values["width_factor"]) ** phi / 8)) * 8)
    depth = sc.base_repeat + int(math.floor(float(values["depth_step"]) * phi + 1e-9))
    size = sc.base_image_size + int(values["resolution_step"]) * phi
    base = space.path.parent if space.path else None
    graph = load_graph(resolve_ref(sc.graph, "graphs", base))
    graph.graph["repeat"] = 1
    scale = {"repeat": depth, "channels": width, "image_size": size,
             "width_scale": width / sc.base_channels, "size_scale": size / sc.base_image_size}
    return graph, [], None, scale


def point_values(space: SearchSpace, name: str) -> dict[str, Any]:
    """Every parameter of the named point (``points:`` in the space file): its ``params``,
    then, for an edges space, its ``edges`` switched on and the rest off, and its
    ``fusion``/``op`` for every node it leaves unset."""
    if name not in space.spec.points:
        from ..errors import RegistryError

        raise RegistryError(f"point of space {space.name!r}", name, space.spec.points)
    point = space.spec.points[name]
    on = set(point.edges or ())

    def fallback(pname: str, dist) -> Any:
        if pname.startswith("edge.") and point.edges is not None:
            return pname[len("edge."):] in on
        if pname.startswith("fusion.") and point.fusion is not None:
            return point.fusion
        if pname.startswith("op.") and point.op is not None:
            return point.op
        raise SearchError(f"does not set parameter {pname!r} ({dist.describe()})")

    rec = RecordingAsk(fixed_ask(point.params, fallback))
    sample(space, rec)
    unused = sorted(set(point.params) - set(rec.values))
    if unused:
        raise SearchError(f"sets parameter(s) {', '.join(unused)} that this point never asks for")
    return dict(rec.values)


def point_candidate(space: SearchSpace, name: str) -> Candidate:
    return sample(space, fixed_ask(point_values(space, name)))
