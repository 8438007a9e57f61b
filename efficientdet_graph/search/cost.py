"""A candidate's cost, counted without training: parameters and FLOPs (multiply-adds,
fvcore's convention) of its feature network at the space's reference scale."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import EdgError
from .mapping import Candidate
from .space import CostSpec

__all__ = ["CandidateCost", "candidate_cost"]


@dataclass(frozen=True)
class CandidateCost:
    params: int
    flops: int


def candidate_cost(candidate: Candidate, cost: CostSpec) -> CandidateCost:
    """Feature-network parameters and FLOPs of ``candidate`` stacked ``repeat`` times at
    its width and image size, fed by inputs of ``cost.in_channels`` channels."""
    from ..profile.analytic import graph_cost

    g = candidate.stacked()
    lo, hi = g.graph["levels"]
    in_channels = {k: c for k, c in cost.in_channels.items() if lo <= k <= hi}
    try:
        c = graph_cost(g, candidate.channels, in_channels, candidate.image_size)
    except EdgError:
        raise
    return CandidateCost(int(c.params), int(c.flops))
