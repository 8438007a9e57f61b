"""efficientdet-graph: feature-pyramid networks declared as YAML graphs.

The public API is what ``__all__`` lists; everything else may change.
"""

from . import scale  # a callable package: efficientdet_graph.scale(phi) (no torch)
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    EdgError,
    PassError,
    Problem,
    RegistryError,
    SearchError,
    ShapeError,
    SpecError,
    TrainingDiverged,
)
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
from . import search  # noqa: E402  (spaces and sampling need no torch; studies load it on use)

__version__ = "0.1.0"

# Names whose modules import torch: loaded on first use, so that spec and graph work
# (and `edg validate` starts) without paying for torch.
_LAZY = {
    "compile_graph": "efficientdet_graph.compile",
    "infer_shapes": "efficientdet_graph.compile",
    "output_shapes": "efficientdet_graph.compile",
    "CompileOptions": "efficientdet_graph.ops",
    "create_model": "efficientdet_graph.model",
    "load_model": "efficientdet_graph.model",
    "save_model": "efficientdet_graph.model",
    "profile_model": "efficientdet_graph.profile",
    "neck": "efficientdet_graph.model",
    "convert_effdet": "efficientdet_graph.model",
    "export_onnx": "efficientdet_graph.model",
    "CheckpointError": "efficientdet_graph.model",
    "prune_model": "efficientdet_graph.prune",
    "train": "efficientdet_graph.train",
    "TrainConfig": "efficientdet_graph.train",
    "evaluate": "efficientdet_graph.train",
    "predict": "efficientdet_graph.train",
    "make_synthetic": "efficientdet_graph.train",
    "DataError": "efficientdet_graph.train",
    "TrainingDiverged": "efficientdet_graph.train",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        # the train stage is also the train function (it is callable): see train/__init__.py
        return module if name == "train" else getattr(module, name)
    raise AttributeError(f"module 'efficientdet_graph' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "CompileOptions",
    "ConfigError",
    "DataError",
    "TrainConfig",
    "TrainingDiverged",
    "convert_effdet",
    "evaluate",
    "export_onnx",
    "make_synthetic",
    "neck",
    "predict",
    "prune_model",
    "train",
    "EdgError",
    "GraphSpec",
    "PASSES",
    "PassError",
    "PassReport",
    "Problem",
    "RegistryError",
    "SearchError",
    "ShapeError",
    "SpecError",
    "__version__",
    "add_same_level_skips",
    "build_graph",
    "canonical_hash",
    "compile_graph",
    "create_model",
    "describe_difference",
    "generate",
    "graph_to_spec",
    "graph_to_yaml",
    "infer_shapes",
    "load_graph",
    "load_model",
    "load_spec",
    "load_spec_text",
    "output_shapes",
    "profile_model",
    "prune_single_input",
    "register_pass",
    "remove_dead_nodes",
    "repeat",
    "run_passes",
    "same_structure",
    "save_model",
    "scale",
    "search",
    "unroll",
]
