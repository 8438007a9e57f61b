"""EfficientDet's compound scaling.

The published family (Table 1) is not the formulas to the letter: widths are hand-
picked, depths and resolutions capped. ``scale`` reproduces the table exactly for
D0-D7 and D7x and uses the paper's formulas beyond it:

* width W = 64 * 1.35^phi, rounded to the nearest multiple of 8 (the table's widths are
  all multiples of 8);
* BiFPN depth 3 + phi; head depth 3 + floor(phi / 3); input 512 + 128 * phi;
* backbone EfficientNet-B{min(phi, 7)}; fusion ``sum`` from phi = 6 on, as D6-D7x.

The same scaling applies to any graph: a spec that names ``panet`` with ``phi: 0`` gets
D0's widths, depth and resolution, so topologies are compared at equal scale.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from ..spec.model_spec import AnchorSpec, BackboneSpec, ModelSpec

__all__ = ["ScaledConfig", "EFFICIENTDET_TABLE", "scale", "family", "resolve"]


class ScaledConfig(BaseModel):
    """One row of the scaling table."""

    model_config = ConfigDict(frozen=True)
    name: str
    phi: int | str
    image_size: int
    backbone: str
    fpn_channels: int
    fpn_repeat: int
    head_repeat: int
    fusion: str
    anchor_scale: float
    levels: tuple[int, int]


def _row(phi, size, b, w, d, dh, fusion="fast_normalized", anchor=4.0, levels=(3, 7)) -> ScaledConfig:
    return ScaledConfig(
        name=f"efficientdet-d{phi}", phi=phi, image_size=size, backbone=f"efficientnet_b{b}",
        fpn_channels=w, fpn_repeat=d, head_repeat=dh, fusion=fusion, anchor_scale=anchor, levels=levels,
    )


EFFICIENTDET_TABLE: dict[int | str, ScaledConfig] = {
    0: _row(0, 512, 0, 64, 3, 3),
    1: _row(1, 640, 1, 88, 4, 3),
    2: _row(2, 768, 2, 112, 5, 3),
    3: _row(3, 896, 3, 160, 6, 4),
    4: _row(4, 1024, 4, 224, 7, 4),
    5: _row(5, 1280, 5, 288, 7, 4),
    6: _row(6, 1280, 6, 384, 8, 5, "sum"),
    7: _row(7, 1536, 6, 384, 8, 5, "sum", anchor=5.0),
    "7x": _row("7x", 1536, 7, 384, 8, 5, "sum", levels=(3, 8)),
}


def scale(phi: int | str) -> ScaledConfig:
    """The configuration for compound coefficient ``phi`` (0, 1, ..., or "7x")."""
    key: object = phi
    if isinstance(phi, str):
        key = phi.strip().lower().removeprefix("d")
        key = int(key) if key.isdigit() else key
    if isinstance(key, (int, str)) and not isinstance(key, bool) and key in EFFICIENTDET_TABLE:
        return EFFICIENTDET_TABLE[key]
    if not isinstance(key, int) or isinstance(key, bool) or key < 0:
        raise ConfigError(f"phi must be a non-negative integer or '7x', got {phi!r}")
    width = int(round(64 * 1.35**key / 8) * 8)
    return _row(key, 512 + 128 * key, min(key, 7), width, 3 + key, 3 + key // 3, "sum" if key >= 6 else "fast_normalized")


def family() -> list[ScaledConfig]:
    """D0-D7 and D7x, as Table 1."""
    return list(EFFICIENTDET_TABLE.values())


def resolve(spec: ModelSpec) -> ModelSpec:
    """A spec with every size set: its own values first, then the scaler's for ``phi``,
    then D0's (a spec without ``phi`` that leaves sizes unset gets D0's).

    Two things stay with the graph: its levels (the model checks ``levels`` against
    them) and its fusion unless the spec sets ``fusion`` (the family's specs do), so
    scaling PANet keeps PANet's fusion."""
    row = scale(spec.phi if spec.phi is not None else 0)
    head_channels = spec.head_channels or spec.fpn_channels or row.fpn_channels
    return spec.model_copy(
        update={
            "backbone": spec.backbone or BackboneSpec(name=row.backbone),
            "image_size": spec.image_size or row.image_size,
            "fpn_channels": spec.fpn_channels or row.fpn_channels,
            "fpn_repeat": spec.fpn_repeat or row.fpn_repeat,
            "head_channels": head_channels,
            "head_repeat": spec.head_repeat if spec.head_repeat is not None else row.head_repeat,
            "anchors": spec.anchors or AnchorSpec(scale=row.anchor_scale),
        }
    )
