"""Fusions: how a node merges its (already resampled) inputs.

Weighted fusions keep one parameter per input edge in a ``ParameterList``, not one
vector per node: torch-pruning follows per-edge parameters when it shrinks the
coupled channel group of a fused node, and silently skips a per-node vector.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import FUSIONS, CompileOptions

__all__ = ["SumFusion", "SoftmaxFusion", "FastNormalizedFusion", "ConcatFusion", "GlobalPoolFusion"]


class SumFusion(nn.Module):
    """O = sum_i I_i"""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class _Weighted(nn.Module):
    def __init__(self, n: int, channels: int | None, eps: float):
        super().__init__()
        shape = (1, channels, 1, 1) if channels else ()
        self.weights = nn.ParameterList([nn.Parameter(torch.ones(shape)) for _ in range(n)])
        self.eps = eps

    def _normalized(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        ws = self._normalized()
        out = xs[0] * ws[0]
        for x, w in zip(xs[1:], ws[1:]):
            out = out + x * w
        return out


class SoftmaxFusion(_Weighted):
    """O = sum_i softmax(w)_i I_i (per channel for the channel-wise variant)."""

    def _normalized(self) -> list[torch.Tensor]:
        w = torch.softmax(torch.stack(list(self.weights)), dim=0)
        return list(w.unbind(0))


class FastNormalizedFusion(_Weighted):
    """O = sum_i relu(w_i) / (eps + sum_j relu(w_j)) I_i (EfficientDet eq. 3)."""

    def _normalized(self) -> list[torch.Tensor]:
        # one stacked tensor: a handful of kernels instead of ~3 per edge
        w = torch.relu(torch.stack(list(self.weights)))
        return list((w / (w.sum(0) + self.eps)).unbind(0))


class ConcatFusion(nn.Module):
    """Concatenate along channels, then 1x1 conv + BN back to ``channels``."""

    def __init__(self, n: int, channels: int, opts: CompileOptions):
        super().__init__()
        self.conv = nn.Conv2d(n * channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps=opts.bn_eps, momentum=opts.bn_momentum)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(torch.cat(xs, dim=1)))


class GlobalPoolFusion(nn.Module):
    """NAS-FPN's GP merge of (a, b): b + sigmoid(global_avg_pool(b)) * a."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return b + torch.sigmoid(b.mean(dim=(2, 3), keepdim=True)) * a


FUSIONS.register("sum")(lambda n, c, opts: SumFusion())
FUSIONS.register("softmax")(lambda n, c, opts: SoftmaxFusion(n, None, opts.fusion_eps))
FUSIONS.register("fast_normalized")(lambda n, c, opts: FastNormalizedFusion(n, None, opts.fusion_eps))
FUSIONS.register("channel_softmax")(lambda n, c, opts: SoftmaxFusion(n, c, opts.fusion_eps))
FUSIONS.register("channel_fast_normalized")(lambda n, c, opts: FastNormalizedFusion(n, c, opts.fusion_eps))
FUSIONS.register("concat", ordered=True)(lambda n, c, opts: ConcatFusion(n, c, opts))
FUSIONS.register("gp", ordered=True, arity=2)(lambda n, c, opts: GlobalPoolFusion())
