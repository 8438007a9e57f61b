"""Spec → ``networkx.DiGraph``, with every structural check located in the source.

The IR (what every later stage reads):

* graph attributes: ``name``, ``description``, ``levels`` (min, max), ``defaults``
  (dict), ``outputs`` ({level: node}, any levels inside ``levels``), ``repeat``;
* input nodes ``P{k}_in``: ``role="input"``, ``level``; one per level of the spec's
  ``inputs`` (default: every level of ``levels``), so the input levels are read off
  the nodes (``input_levels``);
* other nodes: ``role="node"``, ``level``, and only the options the spec set
  (``fusion``, ``op``, ``act``); unset ones come from ``defaults``;
* edges: ``index`` (position among the destination's inputs) and only the
  resampling options the spec set (``downsample``, ``upsample``).
"""

from __future__ import annotations

import networkx as nx

from ..errors import Problem, SpecError, close_match
from ..spec import FUSION_ARITY, GraphSpec, InputRef, SourceMap, input_name, known_names

__all__ = ["NODE_OPTIONS", "EDGE_OPTIONS", "build_graph", "check_spec"]

NODE_OPTIONS = ("fusion", "op", "act")
EDGE_OPTIONS = ("downsample", "upsample")


def build_graph(spec: GraphSpec, source: SourceMap | None = None) -> nx.DiGraph:
    """The IR of a (non-derived) spec; raise SpecError listing every problem."""
    graph, problems = check_spec(spec, source or SourceMap("<spec>"))
    if problems:
        raise SpecError(problems)
    assert graph is not None
    return graph


def check_spec(spec: GraphSpec, src: SourceMap) -> tuple[nx.DiGraph | None, list[Problem]]:
    """Build the IR and collect all structural problems (the graph is None if any)."""
    problems: list[Problem] = []
    hints = [MAX_HINTS]

    def bad(path: tuple, message: str, key: bool = False) -> None:
        problems.append(src.problem(path, message, key=key))

    if spec.derive is not None:
        for field in ("levels", "inputs", "nodes", "edges", "outputs"):
            if field in spec.model_fields_set:
                bad((field,), f"a derived spec takes its {field} from {spec.derive.from_!r}; remove {field!r}", True)
        return None, problems
    if spec.levels is None:
        bad((), "missing required key 'levels' (the input levels, e.g. [3, 7])")
        return None, problems
    lo, hi = spec.levels
    if lo > hi:
        bad(("levels",), f"levels [{lo}, {hi}]: the first (lowest) level must not exceed the last")
        return None, problems

    inputs = _input_levels(spec, lo, hi, bad)

    g = nx.DiGraph(
        name=spec.name,
        description=spec.description,
        levels=(lo, hi),
        defaults=spec.defaults.model_dump(),
        outputs={},
        repeat=spec.repeat,
    )
    for level in inputs:
        g.add_node(input_name(level), role="input", level=level)

    for kind in ("fusion", "op", "act", "downsample", "upsample"):
        _check_name(kind, getattr(spec.defaults, kind), ("defaults", kind), bad)

    # Nodes.
    where: dict[str, tuple] = {}
    skipped: set[int] = set()
    for i, node in enumerate(spec.nodes):
        path = ("nodes", i)
        if node.id in g:
            first = "a graph input" if g.nodes[node.id]["role"] == "input" else f"line {src.locate(where[node.id])[0]}"
            bad(path + ("id",), f"duplicate node id {node.id!r} (already used by {first})")
            skipped.add(i)
            continue
        if _input_level_of(node.id) is not None:
            bad(path + ("id",), f"node id {node.id!r} is spelled like a graph input; P{{k}}_in names are "
                "reserved for the inputs")
        if not lo <= node.level <= hi:
            bad(path + ("level",), f"level {node.level} of node {node.id!r} is outside the input levels [{lo}, {hi}]")
        elif node.level < inputs[0]:
            # Sizes halve, rounding up, going up the pyramid; going down they cannot be
            # recovered from a feature map (2s or 2s - 1?), so no node may lie below
            # the lowest input.
            bad(path + ("level",), f"node {node.id!r} is at level {node.level}, below the lowest input "
                f"P{inputs[0]}_in: its size cannot be known from the inputs (add {node.level} to 'inputs')")
        for kind in NODE_OPTIONS:
            value = getattr(node, kind)
            if value is not None:
                _check_name(kind, value, path + (kind,), bad)
        opts = {k: getattr(node, k) for k in NODE_OPTIONS if getattr(node, k) is not None}
        g.add_node(node.id, role="node", level=node.level, **opts)
        where[node.id] = path

    # Edges, in the order given: a node's inputs first, then the edges list.
    wanted: list[tuple[str, str, dict, tuple]] = []
    for i, node in enumerate(spec.nodes):
        if i in skipped:
            continue
        for j, ref in enumerate(node.inputs):
            src_name, opts = (ref.src, _edge_opts(ref)) if isinstance(ref, InputRef) else (ref, {})
            wanted.append((src_name, node.id, opts, ("nodes", i, "inputs", j)))
    for i, edge in enumerate(spec.edges):
        wanted.append((edge.src, edge.dst, _edge_opts(edge), ("edges", i)))
    edge_where: dict[tuple[str, str], tuple] = {}
    for src_name, dst, opts, path in wanted:
        src_path = path + (("src",) if path[0] == "edges" or opts or _is_ref(spec, path) else ())
        ok = True
        if dst not in g or g.nodes[dst]["role"] == "input":
            what = "a graph input cannot take inputs" if dst in g else _unknown(dst, g, hints)
            bad(path + ("dst",), f"edge destination: {what}")
            ok = False
        if src_name not in g:
            missing_level = _input_level_of(src_name)
            if missing_level is not None and lo <= missing_level <= hi:
                have = ", ".join(str(k) for k in inputs)
                bad(src_path, f"input of {dst!r}: {src_name!r} is not a graph input: level {missing_level} "
                    f"is not among the inputs [{have}]")
            else:
                bad(src_path, f"input of {dst!r}: {_unknown(src_name, g, hints)}")
            ok = False
        if not ok:
            continue
        if g.has_edge(src_name, dst):
            bad(src_path, f"{dst!r} takes {src_name!r} twice")
            continue
        for kind, value in opts.items():
            _check_name(kind, value, path + (kind,), bad)
        g.add_edge(src_name, dst, index=g.in_degree(dst), **opts)
        edge_where[(src_name, dst)] = src_path

    # Outputs.
    used_by: dict[str, int] = {}
    for level, name in spec.outputs.items():
        path = ("outputs", level)
        if not lo <= level <= hi:
            bad(path, f"output level {level} is outside the input levels [{lo}, {hi}]", key=True)
            continue
        if name not in g:
            bad(path, f"output P{level}: {_unknown(name, g, hints)}")
            continue
        if g.nodes[name]["level"] != level:
            bad(path, f"output P{level} is node {name!r}, which is at level {g.nodes[name]['level']}")
            continue
        if name in used_by:
            bad(path, f"node {name!r} is already the output of level {used_by[name]}")
            continue
        used_by[name] = level
        g.graph["outputs"][level] = name
    if spec.inputs is None:
        # Without 'inputs' the spec says nothing about gaps: every level is an input
        # and needs its output, so a forgotten output is caught here.
        missing = [lvl for lvl in range(lo, hi + 1) if lvl not in spec.outputs]
        if missing:
            names = ", ".join(f"P{m}" for m in missing)
            bad(("outputs",), f"no output for level(s) {names}: every input level needs exactly one output "
                "(or name the input levels with 'inputs:' to leave some out)", key=True)
    elif not spec.outputs:
        bad(("outputs",), "no outputs: name at least one, e.g. {" + f"{inputs[0]}: <node>" + "}", key=True)
    accepted = len(g.graph["outputs"]) == len(spec.outputs)  # else the outputs' own problem says enough
    if spec.repeat > 1 and accepted and tuple(sorted(spec.outputs)) != tuple(inputs):
        outs = ", ".join(str(k) for k in sorted(spec.outputs))
        bad(("repeat",), f"repeat: {spec.repeat} feeds each copy's outputs to the next copy's inputs, so the "
            f"output levels [{outs}] must be the input levels [{', '.join(str(k) for k in inputs)}]")

    # Whole-graph checks. A cycle is a cycle even among other mistakes; "reaches no
    # output" waits until the rest is right, since a bad reference would cascade.
    given = {dst for _, dst, _, _ in wanted}
    for node, data in g.nodes(data=True):
        if data["role"] != "node":
            continue
        if node not in given:
            bad(where[node] + ("id",), f"node {node!r} has no inputs, so no graph input reaches it")
        fusion = data.get("fusion") or spec.defaults.fusion
        arity = FUSION_ARITY.get(fusion)
        if arity is not None and node in given and g.in_degree(node) != arity:
            bad(where[node] + ("id",), f"node {node!r}: fusion {fusion!r} takes exactly {arity} inputs, "
                f"got {g.in_degree(node)}")
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        text = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        bad(edge_where[cycle[-1][:2]], f"cycle: {text}")
    elif not problems:
        live = set(g.graph["outputs"].values())
        for out in list(live):
            live |= nx.ancestors(g, out)
        for node, data in g.nodes(data=True):
            if data["role"] == "node" and node not in live:
                bad(where[node] + ("id",), f"node {node!r} reaches no output (route it to one, or remove it)")
    return (None if problems else g), problems


def _input_levels(spec: GraphSpec, lo: int, hi: int, bad) -> tuple[int, ...]:
    """The spec's input levels, each mistake reported. After a mistake every level
    is returned, so that references to the inputs meant are not reported as well."""
    every = tuple(range(lo, hi + 1))
    if spec.inputs is None:
        return every
    if not spec.inputs:
        bad(("inputs",), f"inputs: name at least one level of [{lo}, {hi}] (or leave 'inputs' out for all)")
        return every
    seen: list[int] = []
    ok = True
    for i, level in enumerate(spec.inputs):
        if not lo <= level <= hi:
            near = min(every, key=lambda k: abs(k - level))
            bad(("inputs", i), f"input level {level} is outside levels [{lo}, {hi}] (did you mean {near}?)")
            ok = False
        elif level in seen:
            bad(("inputs", i), f"input level {level} is listed twice")
            ok = False
        elif seen and level < seen[-1]:
            bad(("inputs", i), f"inputs must be ascending: {level} comes after {seen[-1]} "
                f"(did you mean {sorted(set(seen) | {level})}?)")
            ok = False
            seen.append(level)
        else:
            seen.append(level)
    return tuple(seen) if ok else every


def _input_level_of(name: str) -> int | None:
    """The level ``k`` if ``name`` is spelled like a graph input ``P{k}_in``."""
    if name.startswith("P") and name.endswith("_in") and name[1:-3].isdigit():
        return int(name[1:-3])
    return None


def _is_ref(spec: GraphSpec, path: tuple) -> bool:
    return path[0] == "nodes" and isinstance(spec.nodes[path[1]].inputs[path[3]], InputRef)


def _edge_opts(ref) -> dict:
    return {k: getattr(ref, k) for k in EDGE_OPTIONS if getattr(ref, k) is not None}


# Close-match hints cost O(nodes) each; a spec with thousands of unknown names
# must not cost minutes of CPU, so only the first few get one.
MAX_HINTS = 20


def _unknown(name: str, g: nx.DiGraph, budget: list[int]) -> str:
    budget[0] -= 1
    hint = close_match(name, list(g.nodes)) if budget[0] >= 0 else None
    return f"unknown node {name!r}" + (f" (did you mean {hint!r}?)" if hint else "")


def _check_name(kind: str, value: str, path: tuple, bad) -> None:
    known = known_names(kind)
    if value not in known:
        hint = close_match(value, known)
        tail = f"did you mean {hint!r}?" if hint else f"known: {', '.join(known)}"
        bad(path, f"unknown {kind} {value!r} ({tail})")
