"""Load a graph by built-in name or path, resolving ``derive:`` specs through the passes."""

from __future__ import annotations

import os
from pathlib import Path

import networkx as nx

from ..errors import EdgError, SpecError
from ..graph import check_spec, input_levels, output_levels
from ..spec import SourceMap, read_spec
from ..spec.builtin import resolve_ref
from .pipeline import run_pass

__all__ = ["load_graph"]


def load_graph(
    ref: str | os.PathLike,
    *,
    relative_to: Path | None = None,
    named_by: tuple[SourceMap, tuple] | None = None,
) -> nx.DiGraph:
    """The IR of a built-in graph name or a spec file; SpecError lists every problem.

    ``relative_to`` and ``named_by`` are for a graph named inside another spec: a
    relative path is taken from that spec's folder, and a file that is missing or
    not a graph spec is reported at the naming key (its ``SourceMap`` and path).
    """
    return _load(ref, relative_to, (), named_by)


def _load(ref, relative_to: Path | None, chain: tuple[Path, ...],
          named_by: tuple[SourceMap, tuple] | None = None) -> nx.DiGraph:
    try:
        path = resolve_ref(ref, "graphs", relative_to)
    except EdgError as e:
        if named_by is None:
            raise
        raise SpecError([named_by[0].problem(named_by[1], str(e))]) from None
    reading = read_spec(path, named_by=named_by)
    spec, src = reading.spec, reading.source
    if spec is None:
        raise SpecError(reading.problems)
    g, problems = check_spec(spec, src)
    problems = list(reading.problems) + problems
    if spec.derive is None:
        if problems:
            raise SpecError(problems)
        return g

    # A derived spec: its base, then its passes.
    me = path.resolve()
    if problems:
        raise SpecError(problems)
    if me in chain:
        names = " -> ".join(str(p.name) for p in chain + (me,))
        raise SpecError([src.problem(("derive", "from"), f"derivation cycle: {names}")])
    try:
        g = _load(spec.derive.from_, path.parent, chain + (me,), (src, ("derive", "from")))
    except SpecError:
        raise  # the base's own problems, located in the base's file
    except EdgError as e:
        raise SpecError([src.problem(("derive", "from"), str(e))]) from None
    for i, (name, args) in enumerate(spec.pass_calls()):
        try:
            g, _ = run_pass(g, name, args)
        except EdgError as e:
            raise SpecError([src.problem(("derive", "passes", i), str(e))]) from None
    g.graph["name"] = spec.name
    g.graph["description"] = spec.description
    if "defaults" in spec.model_fields_set:
        g.graph["defaults"] = spec.defaults.model_dump()
    if "repeat" in spec.model_fields_set:
        if spec.repeat > 1 and input_levels(g) != output_levels(g):
            raise SpecError([src.problem(("repeat",), f"repeat: {spec.repeat} feeds each copy's outputs to the "
                                         f"next copy's inputs, but {spec.derive.from_!r} has output levels "
                                         f"{list(output_levels(g))} and input levels {list(input_levels(g))}")])
        g.graph["repeat"] = spec.repeat
    return g


