"""The names a spec may use for fusions, node ops, activations and resampling.

The spec stage knows names only; the modules behind them are registered in the
``ops`` stage, which adds each name it registers here, so a spec that names an
op nobody registered is rejected at load time with its line and column.
"""

from __future__ import annotations

__all__ = ["VOCABULARY", "ORDERED_FUSIONS", "FUSION_ARITY", "register_name", "known_names"]

VOCABULARY: dict[str, set[str]] = {
    "fusion": {
        "sum",
        "softmax",
        "fast_normalized",
        "channel_softmax",
        "channel_fast_normalized",
        "concat",
        "gp",
    },
    "op": {"sep_conv", "conv_bn_act", "act_conv_bn", "identity"},
    "act": {"swish", "silu", "relu", "relu6", "none"},
    "downsample": {"max_pool", "avg_pool", "conv"},
    "upsample": {"nearest", "bilinear"},
}

# Fusions whose result depends on the order of their inputs; for all others a
# node's inputs form a set (each edge carries its own weight).
ORDERED_FUSIONS: set[str] = {"concat", "gp"}

# Fusions defined for a fixed number of inputs only.
FUSION_ARITY: dict[str, int] = {"gp": 2}


def register_name(kind: str, name: str, *, ordered: bool = False, arity: int | None = None) -> None:
    """Make ``name`` a valid value for the spec field ``kind``."""
    if kind not in VOCABULARY:
        raise ValueError(f"unknown vocabulary kind {kind!r}; known: {sorted(VOCABULARY)}")
    VOCABULARY[kind].add(name)
    if kind == "fusion" and ordered:
        ORDERED_FUSIONS.add(name)
    if kind == "fusion" and arity is not None:
        FUSION_ARITY[name] = arity


def known_names(kind: str) -> tuple[str, ...]:
    return tuple(sorted(VOCABULARY[kind]))
