"""Search spaces as data: pydantic models of a space file and the checks that need the
whole document (references, conditions, points), every problem located at
``file:line:column`` like a graph spec's.

Three kinds of space, each a documented mapping from parameters to a graph spec
(``mapping.py``):

* ``edges``  — a fixed set of candidate nodes; each node may be present only ``when`` a
  switch says so, has fixed ``inputs`` and ``optional`` ones (one boolean parameter
  each), a fusion and an op drawn from fixed choice sets, and an output per level
  (the first present node of a list). Optional passes (e.g. ``prune_single_input``)
  run on the result. BiFPN, PANet and FPN are points of ``search/bifpn_edges.yaml``.
* ``cells``  — NAS-FPN's merging cells: N cells, each picks two inputs from the growing
  candidate pool, a level and a binary op; the last cells produce the outputs.
* ``scaling`` — compound scaling of a base topology: width factor, depth and
  resolution rules, evaluated at one compound coefficient.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ..errors import EdgError, Problem, SpecError, close_match
from ..graph.build import _check_name
from ..passes import PASSES, load_graph
from ..spec import Defaults, SourceMap, input_name, read_spec
from ..spec.builtin import resolve_ref
from ..spec.models import Level, Name
from .params import Choice, Distribution, FloatRange, IntRange

__all__ = [
    "CellsSpec",
    "CostSpec",
    "ParamSpec",
    "PassStep",
    "PointSpec",
    "ScalingSpec",
    "SpaceNode",
    "SearchSpace",
    "SpaceSpec",
    "Condition",
    "load_space",
    "load_space_text",
]

Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]
# Parameter names may be dotted (edge.B4.P4_in, cell3.op): they name a place in the graph.
ParamName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$", max_length=128)]
MAX_CELLS = 32
MAX_PARAMS = 512


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParamSpec(_Frozen):
    """A declared parameter: categorical (``choices``), ``int`` or ``float`` (``low``..``high``)."""

    type: Literal["categorical", "int", "float"] = "categorical"
    choices: tuple[Scalar, ...] | None = Field(None, max_length=256)
    low: StrictInt | StrictFloat | None = None
    high: StrictInt | StrictFloat | None = None
    step: StrictInt | StrictFloat | None = None
    log: StrictBool = False
    when: StrictStr | None = Field(None, description="asked only when this condition holds, e.g. 'bottom_up'")


class SpaceNode(_Frozen):
    """A candidate node of an ``edges`` space."""

    id: Name
    level: Level
    inputs: tuple[Name, ...] = Field((), max_length=64)
    optional: tuple[Name, ...] = Field((), max_length=64, description="edges switched by parameter edge.<id>.<src>")
    when: StrictStr | None = None
    act: StrictStr | None = None


class PassStep(_Frozen):
    name: Name
    when: StrictStr | None = None


class PointSpec(_Frozen):
    """A known architecture as a point of the space (used as a seed and in tests)."""

    description: StrictStr = ""
    params: dict[ParamName, Scalar] = Field(default_factory=dict)
    edges: tuple[StrictStr, ...] | None = Field(None, description="edges space: the optional edges that are on "
                                                "('NODE.SRC'); every other optional edge is off")
    fusion: StrictStr | None = Field(None, description="fusion of every node the params leave unset")
    op: StrictStr | None = Field(None, description="op of every node the params leave unset")


class CellsSpec(_Frozen):
    min: Annotated[StrictInt, Field(ge=1, le=MAX_CELLS)] = 5
    max: Annotated[StrictInt, Field(ge=1, le=MAX_CELLS)] = 9
    ops: tuple[StrictStr, ...] = Field(("sum", "gp"), min_length=1, max_length=16)
    output_levels: tuple[Level, ...] | None = Field(
        None, description="levels of the last cells, in order (default: the NAS-FPN order P3, P4, P5, P7, P6)")


class ScalingSpec(_Frozen):
    graph: StrictStr = "bifpn"
    phi: Annotated[StrictInt, Field(ge=0, le=16)] = 1
    base_channels: Annotated[StrictInt, Field(ge=8, le=1024)] = 64
    base_repeat: Annotated[StrictInt, Field(ge=1, le=16)] = 3
    base_image_size: Annotated[StrictInt, Field(ge=64, le=4096)] = 512


class CostSpec(_Frozen):
    """Where a candidate's parameters and FLOPs are counted: a reference scale, so costs
    read like the paper's (default: EfficientDet-D0's feature network)."""

    channels: Annotated[StrictInt, Field(ge=1, le=2048)] = 64
    image_size: Annotated[StrictInt, Field(ge=16, le=4096)] = 512
    in_channels: dict[Level, Annotated[StrictInt, Field(ge=1, le=8192)]] = Field(
        default_factory=lambda: {3: 40, 4: 112, 5: 320})


class SpaceSpec(_Frozen):
    name: Name
    description: StrictStr = ""
    kind: Literal["edges", "cells", "scaling"]
    levels: tuple[Level, Level] = (3, 7)
    repeat: Annotated[StrictInt, Field(ge=1, le=16)] = Field(
        2, description="layers a candidate is stacked to, for the proxy task and the cost")
    defaults: Defaults = Defaults()
    # the trial score maximized (search/proxy_scores.py): mAP@0.5, mAP, the negated
    # validation loss, the negated sum of training losses, the extrapolated mAP@0.5
    metric: Literal["map", "map50", "val_loss", "train_loss", "extrapolated"] = "map50"
    params: dict[Name, ParamSpec] = Field(default_factory=dict)
    choices: dict[Literal["fusion", "op"], tuple[StrictStr, ...]] = Field(default_factory=dict)
    nodes: tuple[SpaceNode, ...] = Field((), max_length=256)
    outputs: dict[Level, Union[Name, tuple[Name, ...]]] = Field(default_factory=dict)
    passes: tuple[PassStep, ...] = Field((), max_length=16)
    cells: CellsSpec | None = None
    scaling: ScalingSpec | None = None
    points: dict[Name, PointSpec] = Field(default_factory=dict)
    cost: CostSpec = CostSpec()
    proxy: dict[Name, Scalar] = Field(default_factory=dict, description="proxy-task settings (ProxyConfig fields)")


class Condition:
    """``NAME``, ``not NAME``, ``NAME == VALUE`` or ``NAME != VALUE`` over parameter values."""

    _FORM = re.compile(r"^\s*(not\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*(?:(==|!=)\s*(\S.*?))?\s*$")

    def __init__(self, text: str):
        m = self._FORM.match(text)
        if not m or (m.group(1) and m.group(3)):
            raise ValueError(f"condition {text!r}: expected NAME, 'not NAME', 'NAME == VALUE' or 'NAME != VALUE'")
        self.text, self.negate, self.name, self.op = text, bool(m.group(1)), m.group(2), m.group(3)
        self.value = _scalar(m.group(4)) if m.group(4) is not None else None

    def holds(self, values: dict[str, Any]) -> bool:
        if self.name not in values:
            return False
        v = values[self.name]
        if self.op == "==":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        return bool(v) != self.negate


def _scalar(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip().strip("'\"")


class SearchSpace:
    """A loaded, checked space: the spec, where it came from, and its parameter distributions."""

    def __init__(self, spec: SpaceSpec, source: SourceMap, path: Path | None, text: str):
        self.spec, self.source, self.path, self.text = spec, source, path, text
        self.distributions: dict[str, Distribution] = {n: _distribution(p) for n, p in spec.params.items()}
        self.conditions: dict[str, Condition] = {}
        for where in [p.when for p in spec.params.values()] + [n.when for n in spec.nodes] + [s.when for s in spec.passes]:
            if where:
                self.conditions[where] = Condition(where)

    @property
    def name(self) -> str:
        return self.spec.name

    def condition(self, text: str | None) -> Condition | None:
        return self.conditions[text] if text else None

    def __repr__(self) -> str:
        return f"SearchSpace({self.spec.name!r}, kind={self.spec.kind!r})"


def _distribution(p: ParamSpec) -> Distribution:
    if p.type == "categorical":
        return Choice(tuple(p.choices or ()))
    if p.type == "int":
        return IntRange(int(p.low), int(p.high), int(p.step or 1), p.log)
    return FloatRange(float(p.low), float(p.high), float(p.step) if p.step else None, p.log)


def load_space(ref: str | os.PathLike) -> SearchSpace:
    """A built-in space name (``bifpn_edges``) or a space file; SpecError lists every problem."""
    path = resolve_ref(ref, "search")
    reading = read_spec(path, SpaceSpec)
    return _checked(reading, path)


def load_space_text(text: str, file: str = "<space>") -> SearchSpace:
    from ..spec import read_spec_text

    return _checked(read_spec_text(text, file, SpaceSpec), None)


def _checked(reading, path: Path | None) -> SearchSpace:
    spec, src = reading.spec, reading.source
    if spec is None:
        raise SpecError(reading.problems)
    problems = list(reading.problems) + check_space(spec, src, path.parent if path else None)
    if problems:
        raise SpecError(problems)
    text = path.read_text(encoding="utf-8") if path else ""
    return SearchSpace(spec, src, path, text)


def check_space(spec: SpaceSpec, src: SourceMap, base: Path | None = None) -> list[Problem]:
    """Every problem that needs the whole space: references, conditions, choices, points."""
    problems: list[Problem] = []

    def bad(path: tuple, message: str, key: bool = False) -> None:
        problems.append(src.problem(path, message, key=key))

    lo, hi = spec.levels
    if lo >= hi:
        bad(("levels",), f"levels [{lo}, {hi}]: need at least two levels, lowest first")
        return problems
    for kind in ("fusion", "op", "act", "downsample", "upsample"):
        _check_name(kind, getattr(spec.defaults, kind), ("defaults", kind), bad)
    if len(spec.params) > MAX_PARAMS:
        bad(("params",), f"{len(spec.params)} parameters; the limit is {MAX_PARAMS}")

    # Parameters.
    for name, p in spec.params.items():
        path = ("params", name)
        if p.type == "categorical":
            if not p.choices:
                bad(path, f"parameter {name!r}: a categorical parameter needs a non-empty 'choices' list")
            elif len(set(map(repr, p.choices))) != len(p.choices):
                bad(path + ("choices",), f"parameter {name!r}: choices repeat a value")
            for key in ("low", "high", "step"):
                if getattr(p, key) is not None:
                    bad(path + (key,), f"parameter {name!r}: '{key}' belongs to int/float parameters", True)
        else:
            if p.choices is not None:
                bad(path + ("choices",), f"parameter {name!r}: an {p.type} parameter takes low/high, not choices", True)
            if p.low is None or p.high is None:
                bad(path, f"parameter {name!r}: an {p.type} parameter needs 'low' and 'high'")
                continue
            if p.type == "int" and not all(isinstance(x, int) for x in (p.low, p.high, p.step or 1)):
                bad(path, f"parameter {name!r}: an int parameter needs integer low/high/step")
            elif p.low > p.high:
                bad(path + ("low",), f"parameter {name!r}: low {p.low} exceeds high {p.high}")
            elif p.log and p.low <= 0:
                bad(path + ("low",), f"parameter {name!r}: a log-scaled range needs low > 0")
            elif p.step is not None and p.step <= 0:
                bad(path + ("step",), f"parameter {name!r}: step must be positive")
    for name, p in spec.params.items():
        _check_condition(p.when, ("params", name, "when"), spec, bad, exclude=name)

    if spec.kind == "edges":
        _check_edges(spec, bad)
    elif spec.kind == "cells":
        _check_cells(spec, bad)
    else:
        _check_scaling(spec, src, base, bad)
    for key in ("cells", "scaling"):
        if getattr(spec, key) is not None and spec.kind != key:
            bad((key,), f"'{key}' belongs to a space of kind '{key}', this one is '{spec.kind}'", True)
    if spec.kind != "edges":
        for key in ("nodes", "outputs", "choices", "passes"):
            if key in spec.model_fields_set:
                bad((key,), f"'{key}' belongs to a space of kind 'edges', this one is '{spec.kind}'", True)
    for level in spec.cost.in_channels:
        if not lo <= level <= hi:
            bad(("cost", "in_channels", level), f"input channels given for P{level}, outside levels [{lo}, {hi}]", True)
    if not problems:
        _check_points(spec, src, bad)
    return problems


def _check_condition(text: str | None, path: tuple, spec: SpaceSpec, bad, exclude: str | None = None) -> None:
    if not text:
        return
    try:
        cond = Condition(text)
    except ValueError as e:
        bad(path, str(e))
        return
    names = [n for n in spec.params if n != exclude]
    if cond.name not in names:
        hint = close_match(cond.name, names)
        bad(path, f"condition {text!r}: unknown parameter {cond.name!r}"
            + (f" (did you mean {hint!r}?)" if hint else f"; declared: {', '.join(names) or '(none)'}"))
        return
    dist = _distribution(spec.params[cond.name])
    if cond.op and isinstance(dist, Choice) and not dist.contains(cond.value):
        bad(path, f"condition {text!r}: {cond.value!r} is not {dist.describe()}")


def _check_edges(spec: SpaceSpec, bad) -> None:
    lo, hi = spec.levels
    if not spec.nodes:
        bad((), "an 'edges' space needs 'nodes'")
        return
    for kind, names in spec.choices.items():
        if not names:
            bad(("choices", kind), f"choices for {kind}: give at least one")
        for i, name in enumerate(names):
            _check_name(kind, name, ("choices", kind, i), bad)
    inputs = {input_name(k): k for k in range(lo, hi + 1)}
    seen: dict[str, int] = dict(inputs)
    for i, node in enumerate(spec.nodes):
        path = ("nodes", i)
        if node.id in seen:
            bad(path + ("id",), f"duplicate node id {node.id!r}")
            continue
        if not lo <= node.level <= hi:
            bad(path + ("level",), f"level {node.level} of {node.id!r} is outside levels [{lo}, {hi}]")
        if node.act is not None:
            _check_name("act", node.act, path + ("act",), bad)
        for field in ("inputs", "optional"):
            for j, ref in enumerate(getattr(node, field)):
                if ref not in seen:
                    hint = close_match(ref, list(seen))
                    later = " (nodes may only take inputs from graph inputs and nodes listed before them)" \
                        if any(n.id == ref for n in spec.nodes) else ""
                    bad(path + (field, j), f"{field} of {node.id!r}: unknown node {ref!r}"
                        + (f" (did you mean {hint!r}?)" if hint and not later else "") + later)
        both = set(node.inputs) & set(node.optional)
        if both:
            bad(path + ("optional",), f"{node.id!r}: {sorted(both)} listed both as inputs and optional")
        if len(set(node.inputs)) != len(node.inputs) or len(set(node.optional)) != len(node.optional):
            bad(path, f"{node.id!r} lists an input twice")
        if not node.inputs and not node.optional:
            bad(path + ("id",), f"{node.id!r} has no inputs")
        _check_condition(node.when, path + ("when",), spec, bad)
        seen[node.id] = node.level
    nodes = {n.id: n.level for n in spec.nodes}
    for level in range(lo, hi + 1):
        if level not in spec.outputs:
            bad(("outputs",), f"no output for level P{level}", True)
    for level, names in spec.outputs.items():
        path = ("outputs", level)
        if not lo <= level <= hi:
            bad(path, f"output level {level} is outside levels [{lo}, {hi}]", True)
            continue
        for name in (names,) if isinstance(names, str) else names:
            if name not in nodes:
                hint = close_match(name, list(nodes))
                bad(path, f"output P{level}: unknown node {name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
            elif nodes[name] != level:
                bad(path, f"output P{level}: node {name!r} is at level {nodes[name]}")
    for i, step in enumerate(spec.passes):
        if step.name not in PASSES or step.name == "repeat":
            known = [p for p in PASSES if p != "repeat"]
            hint = close_match(step.name, known)
            bad(("passes", i, "name"), f"unknown pass {step.name!r}" + (f" (did you mean {hint!r}?)" if hint else
                                                                           f"; known: {', '.join(known)}"))
        _check_condition(step.when, ("passes", i, "when"), spec, bad)


def _check_cells(spec: SpaceSpec, bad) -> None:
    lo, hi = spec.levels
    cells = spec.cells or CellsSpec()
    outs = cells.output_levels or default_output_levels(lo, hi)
    if cells.min > cells.max:
        bad(("cells", "min"), f"cells: min {cells.min} exceeds max {cells.max}")
    if sorted(outs) != list(range(lo, hi + 1)):
        bad(("cells", "output_levels"), f"output_levels {list(outs)} must name each level {lo}..{hi} exactly once")
    if cells.min < len(outs):
        bad(("cells", "min"), f"cells: min {cells.min} is fewer than the {len(outs)} output cells")
    for i, op in enumerate(cells.ops):
        _check_name("fusion", op, ("cells", "ops", i), bad)


def default_output_levels(lo: int, hi: int) -> tuple[int, ...]:
    """NAS-FPN's order for its last cells: P3, P4, P5, P7, P6 (shifted to the space's levels)."""
    levels = list(range(lo, hi + 1))
    return tuple(levels[:-2] + [levels[-1], levels[-2]]) if len(levels) >= 2 else tuple(levels)


def _check_scaling(spec: SpaceSpec, src: SourceMap, base: Path | None, bad) -> None:
    scaling = spec.scaling or ScalingSpec()
    try:
        g = load_graph(resolve_ref(scaling.graph, "graphs", base))
    except SpecError as e:
        bad(("scaling", "graph"), f"graph {scaling.graph!r} is not valid: {e.problems[0]}")
        return
    except EdgError as e:
        bad(("scaling", "graph"), str(e))
        return
    if tuple(g.graph["levels"]) != tuple(spec.levels):
        bad(("scaling", "graph"), f"graph {scaling.graph!r} has levels {list(g.graph['levels'])}, "
            f"the space {list(spec.levels)}")
    for name in ("width_factor", "depth_step", "resolution_step"):
        if name not in spec.params:
            bad(("params",), f"a scaling space needs parameter {name!r}", True)


def _check_points(spec: SpaceSpec, src: SourceMap, bad) -> None:
    from .mapping import point_values  # the mapping needs a checked space

    for name, point in spec.points.items():
        path = ("points", name)
        for pname, value in point.params.items():
            if pname in spec.params:
                dist = _distribution(spec.params[pname])
                if not dist.contains(value):
                    bad(path + ("params", pname), f"point {name!r}: {pname} = {value!r} is not {dist.describe()}")
        for key in ("fusion", "op"):
            value = getattr(point, key)
            if value is not None and spec.kind == "edges" and value not in spec.choices.get(key, (value,)):
                bad(path + (key,), f"point {name!r}: {key} {value!r} is not among the space's choices "
                    f"{list(spec.choices.get(key, ()))}")
        if point.edges is not None:
            if spec.kind != "edges":
                bad(path + ("edges",), f"point {name!r}: 'edges' is for spaces of kind 'edges'", True)
                continue
            optional = {f"{n.id}.{s}" for n in spec.nodes for s in n.optional}
            for i, e in enumerate(point.edges):
                if e not in optional:
                    hint = close_match(e, sorted(optional))
                    bad(path + ("edges", i), f"point {name!r}: {e!r} is not an optional edge"
                        + (f" (did you mean {hint!r}?)" if hint else ""))
    space = SearchSpace(spec, src, None, "")
    for name in spec.points:
        try:
            point_values(space, name)
        except EdgError as e:
            bad(("points", name), f"point {name!r}: {e}")
