"""``edg train --config run.yaml``: a training run as a validated file.

The file is read with the spec loader, so a wrong key or value is a ``SpecError`` naming
``FILE:LINE:COL`` and a close match, like every other spec. It converts to ``TrainConfig``;
the effective configuration is written back next to the checkpoint (``OUT/run.yaml``) so
the run can be repeated with ``edg train --config OUT/run.yaml``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from .._io import atomic_write_text
from ..spec import read_spec
from .loop import TrainConfig

__all__ = ["TrainFile", "read_train_file", "write_train_file", "train_config"]

Positive = Annotated[StrictInt, Field(ge=1)]
Number = StrictInt | StrictFloat


class TrainFile(BaseModel):
    """What a run file may set; anything left out keeps ``TrainConfig``'s default.
    Paths are relative to the file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: StrictStr | None = Field(None, description="built-in model spec name or spec file")
    graph: StrictStr | None = Field(None, description="replace the spec's feature graph")
    data: StrictStr | None = Field(None, description="COCO-format folder (DIR/{train,val}/annotations.json + images/) or 'synthetic'")
    out: StrictStr | None = Field(None, description="run folder: checkpoint, metrics, curves, run.yaml")
    image_size: Positive | None = None
    epochs: Positive | None = None
    batch_size: Positive | None = None
    optimizer: Literal["adamw", "sgd"] | None = None
    lr: Annotated[Number, Field(gt=0)] | None = None
    weight_decay: Annotated[Number, Field(ge=0)] | None = None
    warmup_epochs: Annotated[Number, Field(ge=0)] | None = None
    ema_decay: Annotated[Number, Field(ge=0, lt=1)] | None = None
    clip_grad: Annotated[Number, Field(gt=0)] | None = None
    freeze_bn: StrictBool | None = None
    seed: StrictInt | None = None
    eval_every: Positive | None = None
    log_every: Positive | None = None
    device: StrictStr | None = None


_PATHS = ("model", "graph", "data", "out")


def read_train_file(path: str | os.PathLike) -> dict[str, Any]:
    """The fields a run file sets; a path that exists relative to the file is taken from there."""
    spec = read_spec(path, TrainFile).raise_problems()
    values = spec.model_dump(exclude_none=True)
    base = Path(path).parent
    for key in _PATHS:
        value = values.get(key)
        if value and not Path(value).is_absolute() and (base / value).exists():
            values[key] = str(base / value)
    return values


def train_config(file_values: dict[str, Any], flags: dict[str, Any], defaults: dict[str, Any]) -> TrainConfig:
    """File values, then every flag given on the command line (one that differs from its
    default) on top."""
    names = {f.name for f in fields(TrainConfig)}
    merged = {k: v for k, v in flags.items() if k in names}
    for key, value in file_values.items():
        if key not in flags or flags[key] == defaults.get(key):
            merged[key] = value
    return TrainConfig(**merged)


def write_train_file(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """The run as a file ``edg train --config`` reads back."""
    allowed = set(TrainFile.model_fields)
    data = {k: v for k, v in asdict(cfg).items() if k in allowed and v is not None}
    text = "# written by edg train: repeat this run with `edg train --config` on this file\n"
    text += yaml.safe_dump(data, sort_keys=False)
    return atomic_write_text(Path(path), text) or Path(path)
