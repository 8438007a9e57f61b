"""How well does a ranking of networks agree with the reference table? Rank statistics.

Pure functions on numbers (numpy only, nothing trained, no torch): Kendall's tau-b,
Spearman's rho, top-k recall, a bootstrap interval that resamples networks and their
reference seeds, and ``fidelity``, which puts them together for one proxy's scores against
the reference table (``edg search reference``) beside two rankings that need no training
at all: by feature-network FLOPs and by feature-network parameters. A proxy that does not
beat those two is not worth its cost (issue 18).

Conventions: a higher score means a better network, on every side (the reference's
mAP, a proxy's score, and the no-training priors, where more FLOPs or parameters rank
higher: "bigger is better").
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..errors import SearchError

__all__ = ["kendall_tau_b", "spearman_rho", "average_ranks", "top_k_recall", "bootstrap_interval", "fidelity",
           "judge", "PRIORS"]

#: the rankings that need no training: name -> the table row's field, ranked high to low
PRIORS = {"flops": "fpn_flops", "params": "fpn_params"}


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"x and y must be 1-D and of the same length, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        # a NaN compares unequal to everything: it would count as neither a tie nor an order
        raise ValueError("x and y must be finite numbers")
    return a, b


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)).

    Over the n0 = n (n - 1) / 2 pairs: ``ties_x`` counts pairs equal in x (whether or not
    they are equal in y too), ``ties_y`` likewise; a pair tied on either side is neither
    concordant nor discordant. Without ties it is Kendall's tau-a. NaN when either side is
    constant (or n < 2): such a ranking orders no pair.
    """
    a, b = _pair(x, y)
    n = len(a)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)  # each pair once
    sx = np.sign(a[:, None] - a[None, :])[upper]
    sy = np.sign(b[:, None] - b[None, :])[upper]
    n0 = n * (n - 1) // 2
    ties_x, ties_y = int(np.count_nonzero(sx == 0)), int(np.count_nonzero(sy == 0))
    denom = math.sqrt((n0 - ties_x) * (n0 - ties_y))
    # sx * sy is +1 for a concordant pair, -1 for a discordant one, 0 for any tie
    return float(np.sum(sx * sy)) / denom if denom else float("nan")


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n from the smallest value up; tied values share the mean of the ranks they
    span (1, 2, 2, 3 -> 1, 2.5, 2.5, 4)."""
    a = np.asarray(x, dtype=float)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)  # the last rank each distinct value spans
    start = end - counts + 1  # and its first
    return ((start + end) / 2.0)[inverse.reshape(-1)]


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the two sides' average ranks (ties get
    the mean of the ranks they span). NaN when either side is constant (or n < 2)."""
    a, b = _pair(x, y)
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(np.sum(ra * ra)) * float(np.sum(rb * rb)))
    return float(np.sum(ra * rb)) / denom if denom else float("nan")


def _top_k_share(x: np.ndarray, k: int) -> np.ndarray:
    """Per item, the probability that it is in the top k when ties are broken at random:
    1 above the k-th largest value, 0 below it, and r / g for each of the g items tied at
    the k-th value, where r of the k places are left for them."""
    kth = np.sort(x)[::-1][k - 1]
    above = x > kth
    tied = x == kth
    share = above.astype(float)
    share[tied] = (k - int(above.sum())) / int(tied.sum())
    return share


def top_k_recall(scores: Sequence[float], truth: Sequence[float], k: int = 3) -> float:
    """|top k by ``scores`` ∩ top k by ``truth``| / k, higher values ranking higher.

    Ties at the boundary (several items sharing the k-th value on one side) are broken
    uniformly at random, independently on each side, and the result is the *expected*
    recall over those tie-breaks, computed exactly (not sampled): each of g items tied for
    the last r places counts as r / g of an item. So it does not depend on the order the
    items are listed in, and a ranking that ties everything scores what a random pick would.
    """
    a, b = _pair(scores, truth)
    if not 1 <= k <= len(a):
        raise ValueError(f"k must be between 1 and the number of items ({len(a)}), got {k}")
    # the two tie-breaks are independent: P(i in both) = P(i in top k of a) P(i in top k of b)
    return float(np.sum(_top_k_share(a, k) * _top_k_share(b, k))) / k


def bootstrap_interval(scores: Sequence[float], seeds: Sequence[Sequence[float]], n_boot: int = 2000,
                       level: float = 0.9, seed: int = 0) -> dict:
    """A percentile bootstrap interval of tau-b and rho between ``scores`` (one per
    network) and the reference (``seeds``: each network's per-seed reference values).

    One resample, repeated ``n_boot`` times with ``numpy.random.default_rng(seed)``:

    1. draw n networks out of the n, uniformly with replacement (a network drawn twice is
       two items: they tie on ``scores``);
    2. for each drawn network, draw as many seed values as it has, uniformly with
       replacement from its own seeds, and take their mean as its reference score (a
       one-seed network contributes no seed noise);
    3. tau-b and rho between the drawn networks' ``scores`` (never resampled: the
       proxy's own noise is not part of this interval) and those means.

    The interval is the (1 - level) / 2 and (1 + level) / 2 quantiles (numpy's default,
    linear interpolation) of the resamples' values; resamples where a statistic is
    undefined (every drawn network ties on one side) are left out and counted in
    ``undefined``. The same ``seed`` gives the same resamples for any ``scores`` of the
    same networks, so two rankings' intervals are paired.
    """
    x = np.asarray(scores, dtype=float)
    groups = [np.asarray(g, dtype=float) for g in seeds]
    n = len(x)
    if len(groups) != n:
        raise ValueError(f"one seed list per network: {n} scores, {len(groups)} seed lists")
    if n < 2 or any(len(g) == 0 for g in groups):
        raise ValueError("needs at least 2 networks, each with at least one seed value")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"level must be in (0, 1) and n_boot >= 1, got {level}, {n_boot}")
    rng = np.random.default_rng(seed)
    # all resamples at once: seeds padded into an (n, most seeds) matrix; a draw's column
    # is uniform below its network's own seed count, and columns past it are masked out
    counts = np.array([len(g) for g in groups])
    padded = np.zeros((n, int(counts.max())))
    for i, g in enumerate(groups):
        padded[i, :len(g)] = g
    nets = rng.integers(0, n, size=(n_boot, n))  # step 1
    m = counts[nets]
    cols = rng.integers(0, np.broadcast_to(m[..., None], (n_boot, n, padded.shape[1])))  # step 2
    used = np.arange(padded.shape[1]) < m[..., None]
    refs = np.where(used, padded[nets[..., None], cols], 0.0).sum(axis=2) / m
    taus = [kendall_tau_b(x[nets[b]], refs[b]) for b in range(n_boot)]  # step 3
    rhos = [spearman_rho(x[nets[b]], refs[b]) for b in range(n_boot)]
    q = [(1 - level) / 2, (1 + level) / 2]

    def interval(values: list[float]) -> list[float]:
        v = np.asarray(values)
        v = v[np.isfinite(v)]
        return [float(t) for t in np.quantile(v, q)] if len(v) else [float("nan"), float("nan")]

    return {"tau": interval(taus), "rho": interval(rhos), "level": level, "n_boot": n_boot, "seed": seed,
            "undefined": {"tau": int(np.sum(~np.isfinite(taus))), "rho": int(np.sum(~np.isfinite(rhos)))}}


def _figures(scores: np.ndarray, seeds: list[list[float]], means: np.ndarray, k: int, n_boot: int, level: float,
             seed: int) -> dict:
    boot = bootstrap_interval(scores, seeds, n_boot=n_boot, level=level, seed=seed)
    return {"tau": kendall_tau_b(scores, means), "tau_interval": boot["tau"], "rho": spearman_rho(scores, means),
            "rho_interval": boot["rho"], "top_k_recall": top_k_recall(scores, means, k),
            "undefined_resamples": boot["undefined"]}


def fidelity(reference_table_rows: Sequence[Mapping], proxy_scores: Mapping[str, float] | None, split: str = "val",
             metric: str = "map50", k: int = 3, n_boot: int = 2000, level: float = 0.9, seed: int = 0) -> dict:
    """A ranking's agreement with the reference table, beside FLOPs-only and params-only.

    ``reference_table_rows``: the reference results file's ``"table"`` (one row per
    network: ``"network"``, ``"fpn_flops"``, ``"fpn_params"`` and per split
    ``{"values": [one per seed], ...}``). The truth for a network is the mean of its
    ``split`` seed values. Those rows hold the figures of the metric they were summarized
    with (``summarize(runs, metric)``; the file's table is mAP@0.5): ``metric`` names it
    in the result and is not looked up here.

    ``proxy_scores``: network -> score, higher is better; only these networks are compared
    (every one must be in the table with ``split`` values; ``SearchError`` otherwise, and
    when fewer than 4 networks are left).
    ``None``: every network of the table, with no proxy ranking (only the priors).

    The priors rank the same networks by feature-network FLOPs (``fpn_flops``) and by
    feature-network parameters (``fpn_params``), **more ranked higher**: a "bigger is
    better" prior, the ranking one gets for free. Each ranking gets tau-b, rho, their
    ``level`` bootstrap intervals (``bootstrap_interval``; the same ``seed`` for all, so
    the rankings are judged on the same resamples) and top-``k`` recall.
    """
    rows = {r["network"]: r for r in reference_table_rows}
    usable = {name for name, r in rows.items() if (r.get(split) or {}).get("values")}
    names = sorted(usable) if proxy_scores is None else sorted(proxy_scores)
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise SearchError(f"not in the reference table: {', '.join(unknown)} (the table has: {', '.join(sorted(rows))})")
    empty = [n for n in names if n not in usable]
    if empty:
        raise SearchError(f"no {split} scores in the reference table for: {', '.join(empty)}")
    if len(names) < 4:
        raise SearchError(f"{len(names)} networks to compare ({', '.join(names) or 'none'}); a ranking needs at least 4")
    if k > len(names):
        raise SearchError(f"top-{k} recall needs at least {k} networks; there are {len(names)}")
    seeds = [[float(v) for v in rows[n][split]["values"]] for n in names]
    means = np.array([float(np.mean(s)) for s in seeds])
    rankings: dict[str, np.ndarray] = {}
    if proxy_scores is not None:
        rankings["proxy"] = np.array([float(proxy_scores[n]) for n in names])
    for prior, field in PRIORS.items():
        missing = [n for n in names if rows[n].get(field) is None]
        if missing:
            raise SearchError(f"no {field} in the reference table for: {', '.join(missing)}")
        rankings[prior] = np.array([float(rows[n][field]) for n in names])
    return {"split": split, "metric": metric, "n": len(names), "k": k, "networks": names,
            "reference": {n: float(m) for n, m in zip(names, means)},
            "bootstrap": {"n_boot": n_boot, "level": level, "seed": seed,
                          "resamples": "networks with replacement, then each drawn network's seeds with replacement"},
            "rankings": {name: _figures(x, seeds, means, k, n_boot, level, seed) for name, x in rankings.items()}}


def judge(result: dict, ranking: str = "proxy", threshold: float = 0.6, lower_bound: float = 0.3) -> dict:
    """Issue 18's bar for a proxy: tau >= ``threshold``, the interval's lower bound >=
    ``lower_bound``, and tau above both priors' tau (strictly: a ranking that only equals
    FLOPs-only is not worth training for). A prior whose tau is undefined (every network
    ties) orders no pair and counts as 0. ``passed`` and the reasons it failed."""
    figures = result["rankings"][ranking]
    tau, low = figures["tau"], figures["tau_interval"][0]
    reasons = []
    if not tau >= threshold:  # written so that a NaN tau fails too
        reasons.append(f"tau {tau:.3f} < {threshold}")
    if not low >= lower_bound:
        reasons.append(f"the interval's lower bound {low:.3f} < {lower_bound}")
    for prior in PRIORS:
        if prior == ranking:
            reasons.append(f"it is the {prior}-only ranking itself")
            continue
        other = result["rankings"][prior]["tau"]
        other = 0.0 if math.isnan(other) else other
        if not tau > other:
            reasons.append(f"tau {tau:.3f} does not beat {prior}-only ({other:.3f})")
    return {"ranking": ranking, "threshold": threshold, "lower_bound": lower_bound, "passed": not reasons,
            "reasons": reasons}
