"""``edg``: the command line. Thin: parse arguments, call the library, print, exit.

Exit codes: 0 success; 1 ``compare`` found a difference, a training run diverged or missed
its ``--require`` threshold;
2 bad input (a spec error, an unknown name, bad arguments, a bad data set or
checkpoint). ``errors.exit_code`` maps each error class to its code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .. import __version__
from ..errors import EdgError, exit_code
from . import compile_commands, graph_commands, model_commands, search_commands, train_commands

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edg",
        description="Feature-pyramid networks as YAML graphs: validate, derive, compare, draw, compile, "
        "scale into EfficientDet D0-D7x, count, prune, train, evaluate and search.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"edg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    graph_commands.register(sub)
    compile_commands.register(sub)
    model_commands.register(sub)
    train_commands.register(sub)
    search_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # results files record the command
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except EdgError as e:
        if args.debug:
            raise
        print(f"error: {e}" if not hasattr(e, "problems") else str(e), file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
