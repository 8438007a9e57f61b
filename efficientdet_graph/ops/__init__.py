"""Stage 4: the registry of fusion, resample, node and activation modules."""

from . import activations, fusion, node_ops, resample  # noqa: F401  (registers the built-ins)
from .fusion import ConcatFusion, FastNormalizedFusion, GlobalPoolFusion, SoftmaxFusion, SumFusion
from .node_ops import ActConvBn, ConvBnAct, SeparableConv
from .registry import ACTIVATIONS, DOWNSAMPLERS, FUSIONS, NODE_OPS, UPSAMPLERS, CompileOptions, Registry
from .resample import Adapter, AvgPoolSame, Downsample, MaxPoolSame, Resample, Upsample

__all__ = [
    "ACTIVATIONS",
    "DOWNSAMPLERS",
    "FUSIONS",
    "NODE_OPS",
    "UPSAMPLERS",
    "ActConvBn",
    "Adapter",
    "AvgPoolSame",
    "CompileOptions",
    "ConcatFusion",
    "ConvBnAct",
    "Downsample",
    "FastNormalizedFusion",
    "GlobalPoolFusion",
    "MaxPoolSame",
    "Registry",
    "Resample",
    "SeparableConv",
    "SoftmaxFusion",
    "SumFusion",
    "Upsample",
]
