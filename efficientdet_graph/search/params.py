"""Search parameters as plain data: the distributions a space declares and the ``ask``
callback through which a mapping draws them.

The mapping from parameters to a graph is written define-by-run: it asks for each
parameter when (and only when) it needs it, so conditional parameters are simply the
ones it asks on some paths and not others. Names and choice sets never depend on
earlier answers, so every sampler (random, TPE, NSGA-II, evolution) can handle them.
This module does not import Optuna; the study stage converts these distributions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from ..errors import SearchError

__all__ = ["Choice", "IntRange", "FloatRange", "Distribution", "Ask", "fixed_ask", "random_ask", "RecordingAsk"]


@dataclass(frozen=True)
class Choice:
    """One of a fixed tuple of values (str, int, float or bool)."""

    choices: tuple

    def contains(self, value: Any) -> bool:
        return any(type(value) is type(c) and value == c for c in self.choices)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False

    def contains(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
                and (value - self.low) % self.step == 0)

    def describe(self) -> str:
        return f"an integer in [{self.low}, {self.high}]" + (f" in steps of {self.step}" if self.step != 1 else "")


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    step: float | None = None
    log: bool = False

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"a number in [{self.low}, {self.high}]"


Distribution = Union[Choice, IntRange, FloatRange]
Ask = Callable[[str, Distribution], Any]


def fixed_ask(values: Mapping[str, Any], fallback: Ask | None = None) -> Ask:
    """Answers from ``values``; a parameter not given is an error unless ``fallback`` answers it."""

    def ask(name: str, dist: Distribution) -> Any:
        if name in values:
            value = values[name]
            if not dist.contains(value):
                raise SearchError(f"parameter {name!r} = {value!r} is not {dist.describe()}")
            return value
        if fallback is None:
            raise SearchError(f"parameter {name!r} is not given ({dist.describe()})")
        return fallback(name, dist)

    return ask


def random_ask(rng: random.Random) -> Ask:
    """Uniform draws (log-uniform where a range says ``log``), for sampling without a study."""

    def ask(name: str, dist: Distribution) -> Any:
        if isinstance(dist, Choice):
            return dist.choices[rng.randrange(len(dist.choices))]
        if isinstance(dist, IntRange):
            if dist.log:
                value = int(round(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))))
                value = dist.low + (value - dist.low) // dist.step * dist.step
                return min(max(value, dist.low), dist.high)
            return dist.low + dist.step * rng.randrange((dist.high - dist.low) // dist.step + 1)
        if dist.log:
            return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
        if dist.step:
            return dist.low + dist.step * rng.randrange(int(round((dist.high - dist.low) / dist.step)) + 1)
        return rng.uniform(dist.low, dist.high)

    return ask


class RecordingAsk:
    """Wraps an ``ask`` and keeps every answer, in the order asked (the candidate's point)."""

    def __init__(self, inner: Ask):
        self.inner = inner
        self.values: dict[str, Any] = {}
        self.distributions: dict[str, Distribution] = {}

    def __call__(self, name: str, dist: Distribution) -> Any:
        if name in self.values:
            return self.values[name]
        value = self.inner(name, dist)
        self.values[name] = value
        self.distributions[name] = dist
        return value
