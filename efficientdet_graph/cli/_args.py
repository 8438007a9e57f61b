"""Range-checked argument types: a bad number is exit 2 naming the flag, the value and
the allowed range (argparse adds the flag), never a traceback or a silent default."""

from __future__ import annotations

import argparse
import math
from typing import Callable

__all__ = ["bounded", "typed"]


def bounded(kind: type, lo: float | None = None, hi: float | None = None, *,
            lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` accepting ``kind`` values in the range [lo, hi] (open ends
    when asked)."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    allowed = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}; "
                                             f"allowed range {allowed}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not finite; allowed range {allowed}")
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and (value >= hi if hi_open else value > hi)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is outside the allowed range {allowed}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def typed(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the arguments ``argv`` itself gives (already parsed once by
    ``parser``, so it parses): a flag typed with its default value is in, one left out is not."""
    saved = [(a, a.default) for a in parser._actions]
    saved_defaults = parser._defaults
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS  # argparse then sets only what argv names
        parser._defaults = {}
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
        parser._defaults = saved_defaults
    return set(vars(namespace))
