"""Stage 3: analysers (pure graph passes), the pass pipeline, and graph loading with ``derive:``."""

from .core import PassResult, add_same_level_skips, expand_repeat, prune_single_input, remove_dead_nodes, repeat
from .load import load_graph
from .pipeline import PASSES, PassReport, get_pass, parse_pass_arg, register_pass, run_pass, run_passes

__all__ = [
    "PASSES",
    "PassReport",
    "PassResult",
    "add_same_level_skips",
    "expand_repeat",
    "get_pass",
    "load_graph",
    "parse_pass_arg",
    "prune_single_input",
    "register_pass",
    "remove_dead_nodes",
    "repeat",
    "run_pass",
    "run_passes",
]
