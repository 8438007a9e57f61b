"""Training-free scores of a feature network, computed at initialisation in well under a
second: cheap enough to pre-screen thousands of candidates -- if, and only if, the
reference table says they rank (``edg search fidelity REFERENCE --zero-cost NAME``).

Each score looks at the detector a search trial trains (``ProxyModel``: input adapter,
the candidate feature network unrolled ``repeat`` times, class and box heads) on the
feature shapes of the reference backbone, without any data:

* ``entropy`` -- the expressivity score of MAE-DET (Sun et al. 2022, the search behind
  DAMO-YOLO): with every conv weight drawn from N(0, 1), batch norm an identity and
  Gaussian inputs, a feature map's differential entropy under a Gaussian assumption is
  log(sigma) plus a constant, so the score is the sum over the output levels of
  log(std), averaged over a few draws. A wider or deeper network, or one whose outputs
  mix more paths, scores higher.
* ``synflow`` -- Synaptic Flow (Tanaka et al. 2020), used as a zero-cost NAS proxy by
  Abdelfattah et al. 2021: every parameter replaced by its absolute value, an all-ones
  input, R the sum of every output; the score is sum(theta * dR/dtheta) over the
  parameters, reported as its natural log (the raw sum overflows readable ranges).

Both are deterministic for a seed; neither touches the data set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import networkx as nx
import torch
from torch import nn

from ..errors import SearchError
from ..train.multiscale import MULTISCALE_CLASSES
from .reference import Schedule

__all__ = ["ZERO_COST_SCORES", "ZeroCostSettings", "gaussian_entropy", "synflow", "zero_cost_score"]


@dataclass(frozen=True)
class ZeroCostSettings:
    """The detector the score looks at: the reference schedule's shapes on the multiscale
    task by default (``edg search fidelity`` takes them from the reference file instead)."""

    backbone: str = Schedule.backbone
    image_size: int = Schedule.image_size
    channels: int = Schedule.channels
    head_repeat: int = Schedule.head_repeat
    num_classes: int = len(MULTISCALE_CLASSES)
    anchor_scale: float = Schedule.anchor_scale
    act: str = "swish"
    batch: int = 2
    draws: int = 3  # Gaussian draws averaged by the entropy score


def _model(graph: nx.DiGraph, repeat: int, cfg: ZeroCostSettings, backbone_channels: dict[int, int]) -> nn.Module:
    from .proxy import ProxyModel

    g = graph.copy()
    g.graph = {**graph.graph, "repeat": repeat}
    return ProxyModel(g, backbone_channels, cfg.channels, cfg.head_repeat, cfg.num_classes, cfg.anchor_scale, cfg.act)


def _inputs(model: nn.Module, cfg: ZeroCostSettings, channels: dict[int, int], fill: Callable) -> dict:
    from ..compile import level_size

    return {level: fill((cfg.batch, channels[level], *level_size(cfg.image_size, level))) for level in model.inputs}


def gaussian_entropy(model: nn.Module, run: Callable[[torch.Generator], list[torch.Tensor]], draws: int = 3,
                     seed: int = 0) -> float:
    """MAE-DET's score: every conv/linear weight from N(0, 1) (biases 0, batch norm an
    identity in eval mode), ``run(generator)`` the outputs on Gaussian inputs; the sum of
    log(std) over the outputs, averaged over ``draws``."""
    model = model.double().eval()  # eval: a fresh batch norm (mean 0, var 1) is an identity
    total = 0.0
    for draw in range(draws):
        gen = torch.Generator().manual_seed(seed * 1000 + draw)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype))
                    if m.bias is not None:
                        m.bias.zero_()
            total += sum(math.log(float(out.std()) + 1e-300) for out in run(gen))
    return total / draws


def synflow(model: nn.Module, run: Callable[[], list[torch.Tensor]]) -> float:
    """log of sum(theta * dR/dtheta), every parameter made positive, R the sum of the
    outputs of ``run()`` (which feeds all-ones inputs)."""
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad()
    sum(out.sum() for out in run()).backward()
    flow = sum(float((p.detach() * p.grad).sum()) for p in model.parameters() if p.grad is not None)
    return math.log(flow) if flow > 0 else float("-inf")


def _entropy(model: nn.Module, cfg: ZeroCostSettings, channels: dict[int, int], seed: int) -> float:
    def run(gen: torch.Generator) -> list[torch.Tensor]:
        feats = _inputs(model, cfg, channels, lambda s: torch.randn(s, generator=gen, dtype=torch.float64))
        return list(model.fpn(*model.adapter([feats[level] for level in model.inputs])))  # the pyramid

    return gaussian_entropy(model, run, cfg.draws, seed)


def _synflow(model: nn.Module, cfg: ZeroCostSettings, channels: dict[int, int], seed: int) -> float:
    def run() -> list[torch.Tensor]:
        cls_out, box_out = model(_inputs(model, cfg, channels, lambda s: torch.ones(s, dtype=torch.float64)))
        return [*cls_out, *box_out]

    return synflow(model, run)


ZERO_COST_SCORES: dict[str, Callable] = {"entropy": _entropy, "synflow": _synflow}


def zero_cost_score(name: str, graph: nx.DiGraph, repeat: int = 1, settings: ZeroCostSettings = ZeroCostSettings(),
                    seed: int = 0) -> tuple[float, float]:
    """(score, seconds) of ``graph`` unrolled ``repeat`` times; higher is better."""
    if name not in ZERO_COST_SCORES:
        raise SearchError(f"no zero-cost score {name!r}; known: {', '.join(sorted(ZERO_COST_SCORES))}")
    levels = graph.graph["levels"]
    channels = _backbone_channels(settings.backbone, levels[0], levels[1])
    start = time.perf_counter()
    torch.manual_seed(seed)  # synflow scores the initial weights' magnitudes
    model = _model(graph, repeat, settings, channels)
    value = ZERO_COST_SCORES[name](model, settings, channels, seed)
    return value, time.perf_counter() - start


_CHANNELS: dict[tuple, dict[int, int]] = {}


def _backbone_channels(backbone: str, lo: int, hi: int) -> dict[int, int]:
    """The backbone's channels at the levels it gives (built once per name: no weights needed)."""
    from ..model.backbone import Backbone

    key = (backbone, lo, hi)
    if key not in _CHANNELS:
        _CHANNELS[key] = dict(Backbone(backbone, range(lo, hi + 1), False, 0.0).channels)
    return _CHANNELS[key]
