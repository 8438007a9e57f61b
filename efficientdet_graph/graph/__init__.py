"""Stage 2: the graph IR (``networkx.DiGraph``), its structural checks and canonical forms."""

from .access import (
    depths,
    edge_option,
    has_all_levels,
    inner_nodes,
    input_levels,
    inputs_of,
    is_input,
    node_option,
    output_levels,
    topo_order,
)
from .build import build_graph, check_spec
from .canon import canonical_hash, describe_difference, same_structure
from .export import graph_to_spec, graph_to_yaml, spec_to_yaml
from .unroll import layer_name, stack_layers, unroll

__all__ = [
    "build_graph",
    "canonical_hash",
    "check_spec",
    "depths",
    "describe_difference",
    "edge_option",
    "has_all_levels",
    "graph_to_spec",
    "graph_to_yaml",
    "inner_nodes",
    "input_levels",
    "inputs_of",
    "is_input",
    "layer_name",
    "node_option",
    "output_levels",
    "same_structure",
    "spec_to_yaml",
    "stack_layers",
    "topo_order",
    "unroll",
]
