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
from typing import Annotated, Any, Collection, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      field_validator)

from .._io import atomic_write_text
from ..spec import read_spec
from .data import MAX_SCALE, Augment
from .loop import AMP_MODES, TrainConfig

__all__ = ["AugmentFile", "SplitFile", "TrainFile", "read_train_file", "write_train_file", "train_config"]

Positive = Annotated[StrictInt, Field(ge=1)]
Number = StrictInt | StrictFloat
_DEFAULT_AUGMENT = Augment()


def _off_means(word: str):
    # YAML reads a bare `off` / `no` / `false` as False: take it as the word the user meant
    return BeforeValidator(lambda v: word if v is False else v)


def _augment_value(v: Any) -> Any:
    if v is False:
        return "none"
    if isinstance(v, str) and v != "none":
        raise ValueError("expected 'none' or a mapping such as {hflip: 0.5, scale: [0.5, 1.5]}")
    return v


class AugmentFile(BaseModel):
    """Training-time augmentation (``augment: none`` for none): a horizontal flip with
    probability ``hflip``, then scale jitter by a factor drawn from ``scale`` and a random
    ``image_size`` crop. A key left out keeps its default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hflip: Annotated[Number, Field(ge=0, le=1)] = Field(_DEFAULT_AUGMENT.hflip, description="probability of a horizontal flip")
    scale: tuple[Annotated[Number, Field(gt=0, le=MAX_SCALE)], Annotated[Number, Field(gt=0, le=MAX_SCALE)]] = Field(
        _DEFAULT_AUGMENT.scale, description="scale-jitter range [lo, hi] (1 = the image fitted to image_size)")

    @field_validator("scale")
    @classmethod
    def _ordered(cls, v: tuple) -> tuple:
        if v[0] > v[1]:
            raise ValueError(f"the range [lo, hi] needs lo <= hi, got [{v[0]}, {v[1]}]")
        return v


class SplitFile(BaseModel):
    """One split of a COCO-format data set, wherever its files are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    annotations: StrictStr = Field(description="COCO instances JSON file")
    images: StrictStr = Field(description="folder the file's image file_names are relative to")


class TrainFile(BaseModel):
    """What a run file may set; anything left out keeps ``TrainConfig``'s default.
    Paths are relative to the file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: StrictStr | None = Field(None, description="built-in model spec name or spec file")
    graph: StrictStr | None = Field(None, description="replace the spec's feature graph")
    data: StrictStr | None = Field(None, description="COCO-format folder (DIR/{train,val}/annotations.json + images/) or 'synthetic'")
    train_data: SplitFile | None = Field(None, description="the training split's files, instead of data's")
    val_data: SplitFile | None = Field(None, description="the validation split's files, instead of data's")
    out: StrictStr | None = Field(None, description="run folder: checkpoint, metrics, curves, run.yaml")
    init: StrictStr | None = Field(None, description="checkpoint whose backbone weights start the run")
    image_size: Positive | None = None
    fpn_repeat: Positive | None = Field(None, description="feature-network layers, instead of the spec's")
    fpn_channels: Positive | None = Field(None, description="feature-network (and head) width, instead of the spec's")
    epochs: Positive | None = None
    batch_size: Positive | None = None
    optimizer: Literal["adamw", "sgd"] | None = None
    lr: Annotated[Number, Field(gt=0)] | None = None
    weight_decay: Annotated[Number, Field(ge=0)] | None = None
    warmup_epochs: Annotated[Number, Field(ge=0)] | None = None
    backbone_lr: Annotated[Number, Field(ge=0)] | None = Field(
        None, description="the backbone's learning rate as a multiple of lr (0: frozen)")
    backbone_lr_epochs: Annotated[Number, Field(ge=0)] | None = Field(
        None, description="backbone_lr holds for this many epochs, then the backbone trains at lr (default: all)")
    ema_decay: Annotated[Number, Field(ge=0, lt=1)] | None = None
    clip_grad: Annotated[Number, Field(gt=0)] | None = None
    freeze_bn: StrictBool | None = None
    seed: StrictInt | None = None
    eval_every: Positive | None = None
    log_every: Positive | None = None
    device: StrictStr | None = None
    save_every: Positive | None = Field(None, description="steps between mid-epoch checkpoints (besides one per epoch)")
    max_steps: Positive | None = Field(None, description="stop after this many steps")
    sync_bn: StrictBool | None = None
    augment: Annotated[Literal["none"] | AugmentFile, BeforeValidator(_augment_value)] | None = Field(
        None, description="'none', or {hflip: P, scale: [LO, HI]} (default: hflip 0.5, scale [0.5, 1.5])")
    amp: Annotated[Literal[AMP_MODES], _off_means("off")] | None = Field(  # type: ignore[valid-type]
        None, description="mixed precision: auto (CUDA: bf16 where supported, else fp16; CPU: off), off, bf16, fp16")
    class_names: Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(min_length=1)] | None = Field(
        None, description="display names of the data's categories, in category-id order (default: the data's)")
    synthetic_train: Positive | None = None
    synthetic_val: Annotated[StrictInt, Field(ge=0)] | None = None
    synthetic_classes: Positive | None = None

    @field_validator("class_names")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        twice = sorted({n for n in v if v.count(n) > 1}) if v else []
        if twice:
            raise ValueError(f"each class needs its own name; {', '.join(map(repr, twice))} appear(s) more than once")
        return v


_PATHS = ("model", "graph", "data", "out", "init")
# TrainConfig fields a run file does not hold: how this invocation behaves, not what it trains
NOT_IN_FILE = ("resume", "quiet", "workers")


def read_train_file(path: str | os.PathLike) -> dict[str, Any]:
    """The ``TrainConfig`` fields a run file sets, as ``TrainConfig`` holds them; a path that
    exists relative to the file is taken from there."""
    spec = read_spec(path, TrainFile).raise_problems()
    values = spec.model_dump(exclude_none=True, exclude={"augment", "train_data", "val_data"})
    if spec.augment is not None:
        values["augment"] = (None if spec.augment == "none" else
                             Augment(hflip=spec.augment.hflip, scale=tuple(spec.augment.scale)))
    if "class_names" in values:
        values["class_names"] = tuple(values["class_names"])
    base = Path(path).parent

    def located(value: str) -> str:
        return str(base / value) if not Path(value).is_absolute() and (base / value).exists() else value

    for key in _PATHS:
        if values.get(key):
            values[key] = located(values[key])
    for key in ("train_data", "val_data"):
        split = getattr(spec, key)
        if split is not None:
            values[key] = (located(split.annotations), located(split.images))
    return values


def train_config(file_values: dict[str, Any], flags: dict[str, Any], given: Collection[str] = ()) -> TrainConfig:
    """The file's values over ``flags`` (every ``TrainConfig`` field, defaults included),
    except the flags in ``given`` (typed on the command line): those override the file, even
    where they repeat a default."""
    names = {f.name for f in fields(TrainConfig)}
    merged = {k: v for k, v in flags.items() if k in names}
    for key, value in file_values.items():
        if key not in given:
            merged[key] = value
    return TrainConfig(**merged)


def _absolute(value: str) -> str:
    # the run repeats from wherever the file is read
    return str(Path(value).resolve()) if Path(value).exists() else value


def _plain(key: str, value: Any) -> Any:
    if key == "augment":
        return "none" if value is None else {"hflip": value["hflip"], "scale": list(value["scale"])}
    if key in ("train_data", "val_data"):
        return {"annotations": _absolute(value[0]), "images": _absolute(value[1])}
    if key in _PATHS and key != "out" and value and not (key == "data" and value == "synthetic"):
        return _absolute(value)
    return list(value) if isinstance(value, tuple) else value


def write_train_file(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """The run as a file ``edg train --config`` reads back: every field that decides what is
    trained (all but ``NOT_IN_FILE``), so reading it back gives the same ``TrainConfig``."""
    data = {k: _plain(k, v) for k, v in asdict(cfg).items()
            if k in TrainFile.model_fields and (v is not None or k == "augment")}
    text = "# written by edg train: repeat this run with `edg train --config` on this file\n"
    text += yaml.safe_dump(data, sort_keys=False)
    return atomic_write_text(Path(path), text) or Path(path)
