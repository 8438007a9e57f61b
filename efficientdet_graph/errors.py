"""The one exception hierarchy of efficientdet-graph.

    EdgError
     ├── SpecError       a spec (YAML or in-memory) is wrong; lists every problem found
     ├── RegistryError   an unknown name was looked up in a registry (op, pass, built-in graph)
     ├── PassError       an analysis pass was given arguments or a graph it cannot handle
     └── SearchError     a search study cannot run as asked (storage, space/point mismatch)

Every error a user can cause by writing a spec ends as one of these, never as a
bare KeyError or a shape error from deep inside a forward pass.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable

__all__ = ["EdgError", "SpecError", "RegistryError", "PassError", "SearchError", "Problem", "close_match"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a spec, located at ``file:line:column`` (1-based)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class EdgError(Exception):
    """Base class of every error efficientdet-graph raises on purpose."""


class SpecError(EdgError, ValueError):
    """A spec is invalid. ``problems`` lists all of them, sorted by position."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: tuple[Problem, ...] = tuple(
            sorted(set(problems), key=lambda p: (p.file, p.line, p.column, p.message))
        )
        if not self.problems:
            raise ValueError("SpecError needs at least one problem")
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(cls, file: str, message: str, line: int = 1, column: int = 1) -> "SpecError":
        return cls([Problem(file, line, column, message)])


class RegistryError(EdgError, LookupError):
    """A name is not registered; the message lists what is, and a close match."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name = kind, name
        self.known = tuple(sorted(known))
        hint = close_match(name, self.known)
        msg = f"unknown {kind} {name!r}"
        if hint:
            msg += f" (did you mean {hint!r}?)"
        msg += f"; registered: {', '.join(self.known) or '(none)'}"
        super().__init__(msg)

    def __str__(self) -> str:  # LookupError would repr() the message
        return self.args[0]


class PassError(EdgError):
    """An analysis pass cannot run on this graph or with these arguments."""


class SearchError(EdgError):
    """A search cannot run as asked: a storage that cannot be opened, a study made for
    another space, a point that is not in the space."""


def close_match(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``word``, or None when nothing is close."""
    found = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None
