"""Backbones from timm, used with ``features_only``; features picked by stride."""

from __future__ import annotations

import difflib
import math

import torch
from torch import nn

from ..errors import ConfigError, RegistryError

__all__ = ["Backbone", "create_body", "pick_levels"]


def create_body(name: str, pretrained: bool = False, drop_path_rate: float = 0.0) -> nn.Module:
    """timm's ``features_only`` network ``name`` (what ``Backbone`` wraps)."""
    import timm

    if not timm.is_model(name):
        known = timm.list_models()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        err = RegistryError("timm backbone", name, close)
        # timm knows ~1,500 models: name the close ones, not all of them.
        err.args = (f"unknown timm backbone {name!r}"
                    + (f" (close matches: {', '.join(close)})" if close else "")
                    + f"; timm has {len(known)} models, `timm.list_models('{name[:3]}*')` lists some",)
        raise err
    kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    try:
        return timm.create_model(name, features_only=True, pretrained=pretrained, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise RegistryError("timm backbone with features_only", f"{name} ({e})", []) from None


def pick_levels(name: str, reductions: list[int], channels: list[int], levels: range) -> tuple[list[int], list[int], dict[int, int]]:
    """The levels of ``levels`` a network with these feature reductions and channels
    gives: (levels, indices of its features, channels by level)."""
    by_level = {int(math.log2(r)): i for i, r in enumerate(reductions) if r & (r - 1) == 0}
    top = max(by_level)
    wanted = [level for level in levels if level <= top]
    missing = [level for level in wanted if level not in by_level]
    if missing or not wanted:
        raise ConfigError(
            f"backbone {name} gives levels {sorted(by_level)}; the graph needs levels "
            f"{list(levels)} (levels above {top} are made by the input adapter)"
        )
    return wanted, [by_level[level] for level in wanted], {level: channels[by_level[level]] for level in wanted}


class Backbone(nn.Module):
    """A timm feature extractor returning the maps at strides 2^level for ``levels``.

    ``levels`` may start above what the network gives at its top (the input adapter
    makes those); every level it does return must be one the network has.
    """

    def __init__(self, name: str, levels: range, pretrained: bool = False, drop_path_rate: float = 0.0):
        super().__init__()
        self.body = create_body(name, pretrained, drop_path_rate)
        info = self.body.feature_info
        self.levels, self.indices, self.channels = pick_levels(name, info.reduction(), info.channels(), levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        return [feats[i] for i in self.indices]
