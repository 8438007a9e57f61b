"""What one proxy trial says about a network: the scores a ranking can be made from.

One training run of the proxy gives several candidate scores, and which one ranks
networks as real training does is a measured question (``edg search fidelity --proxy``),
so every score is computed from the same trial record (a ``ProxyResult`` as a dict).
Higher is better for all of them; a loss enters negated.

* ``map50``, ``map``: COCO mAP@0.5 and mAP@[.5:.95] on the search-val split after the
  last epoch (the search's objective).
* ``val_loss``: the detection loss on the search-val split after the last epoch (the
  train stage's loss and matching), negated.
* ``train_loss``: the sum over epochs of each epoch's mean training loss, negated -- Ru et
  al.'s "sum of training losses" (SoTL), which they found to rank architectures well
  early in training.
* ``extrapolated``: mAP@0.5's per-epoch curve fitted by ``a - b / epoch`` (least squares)
  and read at its asymptote ``a``: a network still climbing at the end of a short
  schedule is credited for the climb. With one epoch it is that epoch's mAP@0.5.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

__all__ = ["SCORES", "proxy_score", "asymptote"]

SCORES = ("map50", "map", "val_loss", "train_loss", "extrapolated")


def asymptote(history: Sequence[float]) -> float:
    """``a`` of the least-squares fit ``y_e = a - b / e`` over epochs e = 1..n (n >= 2);
    the value itself for n = 1. A straight-line fit in x = 1/e: a is the intercept at x = 0."""
    ys = [float(y) for y in history]
    if not ys:
        raise ValueError("an empty history has no asymptote")
    if len(ys) == 1:
        return ys[0]
    xs = [1.0 / e for e in range(1, len(ys) + 1)]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx


def proxy_score(kind: str, trial: Mapping) -> float:
    """Score ``kind`` (one of ``SCORES``) of one trial record; higher is better."""
    if kind == "map50":
        return float(trial["map50"])
    if kind == "map":
        return float(trial["map"])
    if kind == "val_loss":
        return -float(trial["val_loss"])
    if kind == "train_loss":
        losses = trial["train_losses"]
        if not losses:
            raise ValueError("a trial of 0 epochs has no training loss")
        return -math.fsum(float(x) for x in losses)
    if kind == "extrapolated":
        return asymptote(trial["history"])
    raise ValueError(f"unknown proxy score {kind!r}; known: {', '.join(SCORES)}")
