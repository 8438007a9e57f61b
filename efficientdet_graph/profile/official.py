"""The official EfficientDet counts (TF, with the redundant conv bias before BN), asserted
in google/automl's efficientdet/efficientdet_arch_test.py (docs/reference.md). FLOPs are multiply-adds. D7x is published only as ~77.0M / ~410B."""

from __future__ import annotations

__all__ = ["OFFICIAL"]

OFFICIAL: dict[str, tuple[int, int, bool]] = {
    # name: (params, FLOPs, exact)
    "efficientdet-d0": (3_880_067, 2_550_618_821, True),
    "efficientdet-d1": (6_625_898, 6_133_752_112, True),
    "efficientdet-d2": (8_097_039, 11_045_799_933, True),
    "efficientdet-d3": (12_032_296, 24_982_737_931, True),
    "efficientdet-d4": (20_723_675, 55_346_593_717, True),
    "efficientdet-d5": (33_653_315, 135_729_505_573, True),
    "efficientdet-d6": (51_871_782, 226_033_623_795, True),
    "efficientdet-d7": (51_871_782, 325_473_789_367, True),
    "efficientdet-d7x": (77_000_000, 410_000_000_000, False),
}
