"""Stage 5: compile the graph IR into a ``torch.fx.GraphModule``; shapes before tensors."""

from .builder import compile_graph, module_name
from .shapes import ShapeError, channels_by_level, infer_shapes, level_size, level_sizes, output_shapes

__all__ = [
    "ShapeError",
    "channels_by_level",
    "compile_graph",
    "infer_shapes",
    "level_size",
    "level_sizes",
    "module_name",
    "output_shapes",
]
