"""efficientdet-graph: feature-pyramid networks declared as YAML graphs.

The public API is what ``__all__`` lists; everything else may change.
"""

from .errors import EdgError, PassError, Problem, RegistryError, SpecError
from .graph import (
    build_graph,
    canonical_hash,
    describe_difference,
    graph_to_spec,
    graph_to_yaml,
    same_structure,
    unroll,
)
from .graph.topologies import generate
from .passes import (
    PASSES,
    PassReport,
    add_same_level_skips,
    load_graph,
    prune_single_input,
    register_pass,
    remove_dead_nodes,
    repeat,
    run_passes,
)
from .spec import GraphSpec, load_spec, load_spec_text

__version__ = "0.1.0"

__all__ = [
    "EdgError",
    "GraphSpec",
    "PASSES",
    "PassError",
    "PassReport",
    "Problem",
    "RegistryError",
    "SpecError",
    "__version__",
    "add_same_level_skips",
    "build_graph",
    "canonical_hash",
    "describe_difference",
    "generate",
    "graph_to_spec",
    "graph_to_yaml",
    "load_graph",
    "load_spec",
    "load_spec_text",
    "prune_single_input",
    "register_pass",
    "remove_dead_nodes",
    "repeat",
    "run_passes",
    "same_structure",
    "unroll",
]
