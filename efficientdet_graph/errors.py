"""The one exception hierarchy of efficientdet-graph.

    EdgError                  (the CLI exits 2 on each, 1 on TrainingDiverged)
     ├── SpecError            a spec (YAML or in-memory) is wrong; lists every problem found
     ├── RegistryError        an unknown name was looked up in a registry (op, pass, built-in graph)
     ├── PassError            an analysis pass was given arguments or a graph it cannot handle
     ├── ConfigError          an argument given from Python or the command line is invalid
     │                        (a phi out of range, an unknown padding, a name registered twice)
     ├── ShapeError           an input size or channel count that cannot work
     ├── CheckpointError      a checkpoint that cannot be read, does not fit the model, or
     │                        cannot be converted into the same network
     ├── DataError            a data set that cannot be used
     ├── SearchError          a search study cannot run as asked (storage, space/point mismatch)
     └── TrainingDiverged     the loss became NaN or infinite (exit code 1)

Every error a user can cause ends as one of these, never as a bare KeyError or a shape
error from deep inside a forward pass. The stage modules that raise them re-export them
(``efficientdet_graph.compile.ShapeError`` is ``errors.ShapeError``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable

__all__ = [
    "EdgError", "SpecError", "RegistryError", "PassError", "ConfigError", "ShapeError", "CheckpointError",
    "DataError", "SearchError", "TrainingDiverged", "WorkerLost", "EXIT_CODES", "exit_code", "Problem", "close_match",
]


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


class ConfigError(EdgError, ValueError):
    """An argument given from Python or the command line is invalid."""


class ShapeError(EdgError, ValueError):
    """An input size or channel count that cannot work."""


class CheckpointError(EdgError):
    """A checkpoint that cannot be read, does not fit the model, or cannot be converted
    into the same network."""


class DataError(EdgError):
    """A data set that cannot be used."""


class WorkerLost(RuntimeError):
    """A process the work depends on (a DataLoader worker) was killed from outside -- the
    out-of-memory killer's usual victim. Not an ``EdgError``: the machine failed, not the
    input, so a search retries the trial instead of recording the network as failed."""


class TrainingDiverged(EdgError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# The CLI's exit code per class (most specific first); every other EdgError is bad input.
EXIT_CODES: dict[type[EdgError], int] = {TrainingDiverged: 1, EdgError: 2}


def exit_code(error: EdgError) -> int:
    """The exit code the command line returns for ``error``."""
    for cls, code in EXIT_CODES.items():
        if isinstance(error, cls):
            return code
    return 2


def close_match(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``word``, or None when nothing is close."""
    found = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None
