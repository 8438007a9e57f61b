"""Stage 8: parameters and FLOPs (multiply-adds, fvcore's convention) per component and node."""

from .counter import FlopCounts, count_flops, count_params, fvcore_flops
from .official import OFFICIAL
from .report import COMPONENTS, FLOPS_NOTE, Profile, family_rows, profile_model, redundant_biases

__all__ = [
    "COMPONENTS",
    "FLOPS_NOTE",
    "OFFICIAL",
    "FlopCounts",
    "Profile",
    "count_flops",
    "count_params",
    "family_rows",
    "fvcore_flops",
    "profile_model",
    "redundant_biases",
]
