"""Proxy variants: settings of the one proxy (``ProxyConfig`` fields), compared on a reference table.

A variant is data -- a name, a short reason, the settings laid over the reference's own
proxy setting (``calibrate.reference_proxy``) and the seeds per network -- never a
copy of the proxy's code. ``edg search calibrate`` trains each on every network of a
reference table, scores each trial every way ``proxy_scores.SCORES`` knows, and judges
every (variant, score) pair beside the training-free scores and the FLOPs and
parameters priors. The cheapest pair that clears the bar (``ranking.judge``) is the
default proxy.

The settings pair up so that one thing changes at a time: ``images``, ``epochs`` and
``fewer-images`` make the same number of optimizer steps over 1024, 256 and 128 images
(EcoNAS found more images and fewer epochs keep the ranking better); the others change
one setting of ``epochs``: ``longer`` doubles its epochs, ``narrow`` halves the width,
``two-seeds`` averages two trials, ``curve`` scores every epoch for the extrapolated score;
``small-images`` caches the backbone's features at a smaller input size;
``fpn-pretrained`` freezes a backbone pre-trained inside an FPN detector (the FPN bias the
reference's neck-free pre-training avoids).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SearchError, close_match

__all__ = ["Variant", "VARIANTS", "get_variant"]


@dataclass(frozen=True)
class Variant:
    name: str
    why: str
    settings: dict = field(default_factory=dict)
    seeds: int = 1
    #: the trial scores judged (None: every one): a variant that trains as another does and
    #: differs only in what it records judges only what that adds
    scores: tuple[str, ...] | None = None


# every variant scores once, after its last epoch, but ``curve`` (the per-epoch history);
# batch and learning rate are the reference's (8, 4e-3: calibrate.reference_proxy)
_ONCE = {"score_every_epoch": False}

# the base of the one-change variants below: `epochs` ranked best of the three step-equal
# ones on the first 11 networks of the multiscale table (docs/search.md)
_BASE = {**_ONCE, "epochs": 4, "trial_images": 256}

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("images", "1 epoch over 1024 images and their flips (256 steps of 8)",
            {**_ONCE, "epochs": 1, "trial_images": 1024}),
    Variant("epochs", "4 epochs over 256 images and their flips: the steps of `images`", _BASE),
    Variant("fewer-images", "8 epochs over 128 images and their flips: the steps of `images` again",
            {**_ONCE, "epochs": 8, "trial_images": 128}),
    Variant("longer", "8 epochs over 256 images: twice the steps of `epochs`", {**_BASE, "epochs": 8}),
    Variant("narrow", "`epochs` at 16 channels instead of the reference's 32", {**_BASE, "channels": 16}),
    Variant("two-seeds", "`epochs`, the mean of two seeds per network", _BASE, seeds=2),
    Variant("curve", "`epochs` scored after every epoch (the history the extrapolated score fits; it trains "
            "as `epochs` does, so only that score is judged)",
            {**_BASE, "score_every_epoch": True}, scores=("extrapolated",)),
    Variant("small-images", "`epochs` on features of 128 px images instead of 192", {**_BASE, "image_size": 128}),
    Variant("fpn-pretrained", "`epochs` on a backbone pre-trained inside an FPN detector (5 epochs), the older "
            "proxy's way, instead of the reference's neck-free classification pre-training",
            {**_BASE, "backbone_weights": None, "pretrain_graph": "fpn", "pretrain_epochs": 5}),
)}


def get_variant(name: str) -> Variant:
    """A registered variant; an unknown name is a ``SearchError`` naming a close one."""
    if name in VARIANTS:
        return VARIANTS[name]
    hint = close_match(name, VARIANTS)
    raise SearchError(f"unknown proxy variant {name!r}" + (f" (did you mean {hint!r}?)" if hint else
                                                            f"; known: {', '.join(VARIANTS)}"))
