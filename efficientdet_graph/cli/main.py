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

# Help for arguments registered without their own (by destination name); every flag of
# every command then shows a help line with its default (tests/test_cli_help.py).
_FALLBACK_HELP = {
    "paths": "spec files or built-in names", "topology": "topology generator", "base": "graph to derive from",
    "a": "first graph (name or path)", "b": "second graph (name or path)", "graph": "built-in name or path",
    "format": "output format", "family": "model family", "json": "print JSON instead of text",
    "image_size": "image size in pixels (default: the spec's)", "num_classes": "classes (default: the spec's)",
    "output": "write here", "ratio": "fraction of the feature network's channels to remove (0-1)",
    "kind": "data set kind", "out": "output folder", "train": "training images", "val": "validation images",
    "size": "image size in pixels", "classes": "number of shape classes", "seed": "random seed",
    "epochs": "training epochs", "lr": "learning rate (default: 2e-3 AdamW, 0.08*batch/64 SGD)",
    "optimizer": "optimizer", "device": "'auto' (CUDA if available), 'cpu' or 'cuda[:N]'",
    "freeze_bn": "keep batch-norm statistics fixed", "eval_every": "epochs between evaluations",
    "synthetic_train": "training images when --data synthetic", "synthetic_val": "validation images when --data synthetic",
    "quiet": "no progress bar or per-epoch lines", "checkpoint": "checkpoint file (.pt)", "split": "data split",
    "batch_size": "batch size", "images": "image files", "score": "lowest score drawn",
    "graphs": "graphs to train, one after another",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` unless the help already says it, or there is nothing to say
    (off switches, and unset values whose meaning the help explains)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _complete_help(sub: argparse._SubParsersAction) -> None:
    for p in sub.choices.values():
        p.formatter_class = HelpFormatter
        for action in p._actions:
            if not action.help and action.dest in _FALLBACK_HELP:
                action.help = _FALLBACK_HELP[action.dest]


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
    _complete_help(sub)
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
