"""Stage 1: the spec. Pydantic models of the YAML and the loader with line/column errors."""

from .loader import SpecReading, load_spec, load_spec_text, read_spec, read_spec_text, spec_from_data
from .models import (
    MAX_LEVEL,
    MAX_NODES,
    MAX_REPEAT,
    Defaults,
    DeriveSpec,
    EdgeSpec,
    GraphSpec,
    InputRef,
    NodeOptions,
    NodeSpec,
    PassCall,
    input_name,
)
from .source import SourceMap, parse_yaml
from .vocab import FUSION_ARITY, ORDERED_FUSIONS, known_names, register_name

__all__ = [
    "MAX_LEVEL",
    "MAX_NODES",
    "MAX_REPEAT",
    "FUSION_ARITY",
    "ORDERED_FUSIONS",
    "Defaults",
    "DeriveSpec",
    "EdgeSpec",
    "GraphSpec",
    "InputRef",
    "NodeOptions",
    "NodeSpec",
    "PassCall",
    "SourceMap",
    "SpecReading",
    "input_name",
    "known_names",
    "load_spec",
    "load_spec_text",
    "parse_yaml",
    "read_spec",
    "read_spec_text",
    "register_name",
    "spec_from_data",
]

from .model_spec import AnchorSpec, BackboneSpec, ModelSpec  # noqa: E402

__all__ += ["AnchorSpec", "BackboneSpec", "ModelSpec"]
