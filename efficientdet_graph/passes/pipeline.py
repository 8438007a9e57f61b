"""The pass registry and the pipeline that runs a list of passes with reports."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import networkx as nx

from ..errors import ConfigError, PassError, RegistryError, close_match
from . import core

__all__ = ["PASSES", "PassReport", "register_pass", "get_pass", "run_pass", "run_passes", "parse_pass_arg"]

PassFn = Callable[..., core.PassResult]

PASSES: dict[str, PassFn] = {
    "prune_single_input": core.prune_single_input,
    "add_same_level_skips": core.add_same_level_skips,
    "remove_dead_nodes": core.remove_dead_nodes,
    "repeat": core.repeat,
    "expand_repeat": core.expand_repeat,
}


@dataclass(frozen=True)
class PassReport:
    name: str
    args: dict[str, Any]
    changes: tuple[str, ...]

    def __str__(self) -> str:
        call = self.name + (f"({', '.join(f'{k}={v!r}' for k, v in self.args.items())})" if self.args else "")
        body = "\n".join(f"  - {c}" for c in self.changes) or "  (no change)"
        return f"{call}:\n{body}"


def register_pass(name: str, fn: PassFn) -> None:
    """Add a pass: ``fn(graph, **args) -> PassResult``, pure (must not mutate ``graph``)."""
    if name in PASSES:
        raise ConfigError(f"pass {name!r} is already registered")
    PASSES[name] = fn


def get_pass(name: str) -> PassFn:
    if name not in PASSES:
        raise RegistryError("pass", name, PASSES)
    return PASSES[name]


def run_pass(g: nx.DiGraph, name: str, args: dict[str, Any] | None = None) -> tuple[nx.DiGraph, PassReport]:
    fn = get_pass(name)
    args = dict(args or {})
    params = list(inspect.signature(fn).parameters.values())[1:]
    names = [p.name for p in params]
    for key in args:
        if key not in names:
            hint = close_match(key, names)
            takes = f"takes {', '.join(names)}" if names else "takes no arguments"
            raise PassError(f"pass {name!r} has no argument {key!r}" + (f" (did you mean {hint!r}?)" if hint else f"; it {takes}"))
    for p in params:
        if p.default is inspect.Parameter.empty and p.name not in args:
            raise PassError(f"pass {name!r} needs argument {p.name!r}")
    result = fn(g, **args)
    return result.graph, PassReport(name, args, result.changes)


def run_passes(
    g: nx.DiGraph, calls: Iterable[str | tuple[str, dict[str, Any]]]
) -> tuple[nx.DiGraph, list[PassReport]]:
    """Run passes in order: each call is a name or ``(name, args)``."""
    reports = []
    for call in calls:
        name, args = (call, {}) if isinstance(call, str) else call
        g, report = run_pass(g, name, args)
        reports.append(report)
    return g, reports


def parse_pass_arg(text: str) -> tuple[str, dict[str, Any]]:
    """``repeat:n=3`` or ``repeat(n=3)`` or ``prune_single_input`` → (name, args), for the CLI."""
    text = text.strip()
    name, _, rest = text.replace("(", ":", 1).rstrip(")").partition(":")
    args: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise PassError(f"pass argument {part!r} should look like name=value")
        args[key.strip()] = _literal(value.strip())
    return name.strip(), args


def _literal(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


