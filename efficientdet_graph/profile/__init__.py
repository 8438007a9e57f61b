"""Stage 8: parameters and FLOPs (multiply-adds, fvcore's convention) per component and node."""

from .analytic import Cost, backbone_cost, graph_cost, model_cost
from .counter import FlopCounts, count_flops, count_params, fvcore_flops
from .latency import measure_latency
from .official import OFFICIAL
from .report import COMPONENTS, FLOPS_NOTE, Profile, family_rows, profile_model, redundant_biases

__all__ = [
    "COMPONENTS",
    "FLOPS_NOTE",
    "OFFICIAL",
    "Cost",
    "FlopCounts",
    "backbone_cost",
    "Profile",
    "count_flops",
    "count_params",
    "family_rows",
    "fvcore_flops",
    "graph_cost",
    "measure_latency",
    "model_cost",
    "profile_model",
    "redundant_biases",
]
