"""Stage 7: full detectors: backbone (timm), input adapter, compiled feature network, heads, anchors."""

from .anchors import Anchors, decode_boxes, decode_outputs, encode_boxes, postprocess, select_detections
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
    "decode_outputs",
    "select_detections",
]

from .checkpoint import CheckpointError, load_model, save_atomic, save_model  # noqa: E402
from .convert import (  # noqa: E402
    convert_effdet,
    effdet_state_dict,
    has_redundant_bias,
    load_effdet_checkpoint,
    model_for_effdet,
    spec_from_effdet_config,
)

__all__ += ["CheckpointError", "convert_effdet", "effdet_state_dict", "has_redundant_bias", "load_effdet_checkpoint",
            "load_model", "model_for_effdet", "save_atomic", "save_model", "spec_from_effdet_config"]
from .necks import BackboneWithNeck, GraphNeck, neck  # noqa: E402
from .export import DecodedDetector, export_detector_onnx, export_detector_program, export_onnx  # noqa: E402

__all__ += ["BackboneWithNeck", "GraphNeck", "neck", "DecodedDetector", "export_detector_onnx",
            "export_detector_program", "export_onnx"]
