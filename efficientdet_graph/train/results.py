"""Results files: what a run measured, with the command, versions, date and machine that
produced it, and the thresholds it was held to. The README's figures come from these
files; a command given ``--require`` fails (exit 1) when its run misses."""

from __future__ import annotations

import datetime
import json
import operator
import os
import platform
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from ..errors import ConfigError

__all__ = ["Requirement", "parse_requirement", "environment", "write_results"]

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Requirement:
    """``metric op value``, e.g. ``map50>=0.5``."""

    metric: str
    op: str
    value: float

    def check(self, metrics: dict[str, Any]) -> dict[str, Any]:
        measured = metrics.get(self.metric)
        passed = isinstance(measured, (int, float)) and _OPS[self.op](measured, self.value)
        return {**asdict(self), "measured": measured, "passed": bool(passed)}

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_requirement(text: str) -> Requirement:
    m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*", text)
    if not m:
        raise ConfigError(f"--require {text!r}: expected METRIC>=VALUE (e.g. map50>=0.5; also <=, >, <)")
    try:
        value = float(m[3])
    except ValueError:
        raise ConfigError(f"--require {text!r}: {m[3]!r} is not a number") from None
    return Requirement(m[1], m[2], value)


def environment() -> dict[str, Any]:
    """Versions, date and machine of this process."""
    import torch

    from .. import __version__

    versions = {"python": platform.python_version(), "torch": torch.__version__, "efficientdet_graph": __version__}
    for name in ("timm", "torchvision", "pycocotools"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing optional package is simply not listed
            pass
    machine = {"node": platform.node(), "platform": platform.platform(), "processor": platform.processor(),
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions, "machine": machine}


def write_results(path: str | os.PathLike, *, command: list[str] | None = None, config: dict | None = None,
                  metrics: dict | None = None, curves: list[dict] | None = None, rows: list[dict] | None = None,
                  requirements: list[dict] | None = None, curves_png: str | os.PathLike | None = None) -> Path:
    """Write a results file atomically; a curves picture is copied beside it (same stem, .png)."""
    path = Path(path)
    doc: dict[str, Any] = {"command": " ".join(command if command is not None else ["edg", *sys.argv[1:]]),
                           **environment()}
    for key, value in (("config", config), ("metrics", metrics), ("requirements", requirements),
                       ("rows", rows), ("curves", curves)):
        if value is not None:
            doc[key] = value
    if requirements is not None:
        doc["passed"] = all(r["passed"] for r in requirements)
    if curves_png is not None and Path(curves_png).exists():
        png = path.with_suffix(".png")
        png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(curves_png, png)
        doc["curves_png"] = png.name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")
    return path
