"""Stage 7: full detectors: backbone (timm), input adapter, compiled feature network, heads, anchors."""

from .anchors import Anchors, decode_boxes, encode_boxes, postprocess
from .build import EfficientDet, build_model, builtin_models, create_model, load_model_spec, model_graph

__all__ = [
    "Anchors",
    "EfficientDet",
    "build_model",
    "builtin_models",
    "create_model",
    "decode_boxes",
    "encode_boxes",
    "load_model_spec",
    "model_graph",
    "postprocess",
]

from .checkpoint import CheckpointError, load_model, save_atomic, save_model  # noqa: E402
from .convert import convert_effdet, effdet_state_dict, load_effdet_checkpoint  # noqa: E402
from .necks import BackboneWithNeck, GraphNeck, neck  # noqa: E402

__all__ += ["CheckpointError", "convert_effdet", "effdet_state_dict", "load_effdet_checkpoint", "load_model",
            "save_atomic", "save_model", "BackboneWithNeck", "GraphNeck", "neck"]
