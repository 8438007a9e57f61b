"""Checkpoints: the spec, the graph and the weights in one file, written atomically and
read with ``weights_only=True`` (nothing in a checkpoint can run code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_open
from ..errors import CheckpointError  # defined in errors.py, re-exported here
from ..graph import build_graph, graph_to_yaml
from ..spec import ModelSpec, load_spec_text
from .build import EfficientDet, build_model

__all__ = ["FORMAT", "CheckpointError", "save_atomic", "save_model", "load_model", "read_checkpoint"]

FORMAT = "efficientdet-graph/1"



def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that a crash cannot leave half-written."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def save_model(model: EfficientDet, path: str | os.PathLike, extra: dict | None = None) -> Path:
    return save_atomic(
        {
            "format": FORMAT,
            "spec": model.spec.model_dump(mode="json"),
            "graph": graph_to_yaml(model.graph),
            "state_dict": model.state_dict(),
            **({"class_names": list(model.class_names)} if model.class_names else {}),
            **(extra or {}),
        },
        path,
    )


def read_checkpoint(path: str | os.PathLike) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # a truncated or foreign file: say so, without a traceback
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    return ckpt


def load_model(path: str | os.PathLike) -> EfficientDet:
    """A model saved by ``save_model``, weights loaded strictly."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an efficientdet-graph checkpoint (try `edg convert` for effdet files)")
    spec = ModelSpec.model_validate(ckpt["spec"])
    gspec, src = load_spec_text(ckpt["graph"], f"{path}#graph")
    model = build_model(spec, graph=build_graph(gspec, src))
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    names = ckpt.get("class_names")
    if names is not None:
        if not (isinstance(names, list) and len(names) == spec.num_classes and all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"{path}: class_names must be {spec.num_classes} strings")
        model.class_names = names
    return model
