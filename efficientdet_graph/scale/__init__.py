"""Stage 6: compound scaling. φ → input size, backbone, widths, depths (EfficientDet §4.2)."""

from .scaler import EFFICIENTDET_TABLE, ScaledConfig, family, resolve, scale

__all__ = ["EFFICIENTDET_TABLE", "ScaledConfig", "family", "resolve", "scale"]
