"""Pydantic models of a model spec: backbone + feature graph + heads + scaling.

Unset sizes are filled by compound scaling from ``phi`` (the ``scale`` stage);
what a spec sets always wins, so a spec can pin anything the scaler would choose.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from .models import Level

__all__ = ["BackboneSpec", "AnchorSpec", "ModelSpec"]

Positive = Annotated[StrictInt, Field(ge=1)]
Ratio = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]

# Bounds far above any published detector (D7x: 1536 px, 384 channels; LVIS: 1,203
# classes) and far below what would overflow or ask for terabytes of memory.
MAX_IMAGE_SIZE = 8192
MAX_CHANNELS = 8192
MAX_CLASSES = 10_000


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BackboneSpec(_Frozen):
    """A timm model used with ``features_only``: EfficientNet B0-B7 by default, any
    timm CNN with a feature pyramid otherwise (its features at strides 2^level)."""

    name: StrictStr = Field("efficientnet_b0", min_length=1)
    pretrained: StrictBool = False
    drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.0


class AnchorSpec(_Frozen):
    scale: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 4.0
    num_scales: Annotated[StrictInt, Field(ge=1, le=8)] = 3
    aspect_ratios: Annotated[
        tuple[tuple[Ratio, Ratio], ...],
        Field(min_length=1, max_length=16),
    ] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


class ModelSpec(_Frozen):
    """A detector. ``phi`` fills what is left unset by EfficientDet's compound scaling."""

    name: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=64)]
    description: StrictStr = ""
    graph: StrictStr = Field("bifpn", description="built-in graph name or path (relative to this file)")
    phi: Annotated[StrictInt, Field(ge=0, le=16)] | Literal["7x"] | None = None
    backbone: BackboneSpec | None = None
    image_size: Annotated[StrictInt, Field(ge=1, le=MAX_IMAGE_SIZE)] | None = None
    levels: tuple[Level, Level] | None = None
    fpn_channels: Annotated[StrictInt, Field(ge=1, le=MAX_CHANNELS)] | None = None
    fpn_repeat: Annotated[StrictInt, Field(ge=1, le=64)] | None = None
    head_channels: Annotated[StrictInt, Field(ge=1, le=MAX_CHANNELS)] | None = None
    head_repeat: Annotated[StrictInt, Field(ge=0, le=16)] | None = None
    fusion: StrictStr | None = Field(None, description="replaces the graph's default fusion")
    anchors: AnchorSpec | None = None
    num_classes: Annotated[StrictInt, Field(ge=1, le=MAX_CLASSES)] = 90
    act: StrictStr = "swish"
    padding: Literal["same", "symmetric"] = "symmetric"
    bn_eps: Annotated[StrictFloat, Field(gt=0, le=1, allow_inf_nan=False)] = 1e-3
    bn_momentum: Annotated[StrictFloat, Field(gt=0, le=1)] = 0.01
