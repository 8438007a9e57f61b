"""Checkpoints: the spec, the graph and the weights in one file, written atomically and
read with ``weights_only=True`` (nothing in a checkpoint can run code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydantic
import torch

from .._io import atomic_open
from ..errors import CheckpointError  # defined in errors.py, re-exported here
from ..graph import build_graph, graph_to_yaml
from ..spec import ModelSpec, SourceMap, load_spec_text
from .build import EfficientDet, build_model

__all__ = ["FORMAT", "CheckpointError", "save_atomic", "save_model", "load_model", "model_from_checkpoint",
           "read_checkpoint"]

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


def model_from_checkpoint(ckpt: Any, path: str | os.PathLike) -> EfficientDet:
    """The model a ``save_model`` dict describes, its weights loaded strictly; every way
    the dict can be wrong is a CheckpointError naming ``path`` (a SpecError, located in
    ``path#graph``, for a bad graph).

    The model is made on the meta device first and the weights checked against it
    key by key, shape by shape: a spec that asks for more memory than its weights
    hold is refused before anything is allocated."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an efficientdet-graph checkpoint (try `edg convert` for effdet files)")
    for key, kind in (("spec", dict), ("graph", str), ("state_dict", dict)):
        if not isinstance(ckpt.get(key), kind):
            got = "missing" if key not in ckpt else f"a {type(ckpt[key]).__name__}"
            raise CheckpointError(f"{path}: entry {key!r} should be a {kind.__name__}, is {got}")
    try:
        spec = ModelSpec.model_validate(ckpt["spec"])
    except pydantic.ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(x) for x in first["loc"])
        raise CheckpointError(f"{path}: invalid model spec in the checkpoint: {where}: {first['msg']} "
                              f"({e.error_count()} problem(s))") from None
    gspec, src = load_spec_text(ckpt["graph"], f"{path}#graph")
    graph = build_graph(gspec, src)
    weights = ckpt["state_dict"]
    with torch.device("meta"):
        shape_model = build_model(spec, SourceMap(f"{path}#spec"), graph=graph)
    expected = shape_model.state_dict()
    del shape_model
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, t in expected.items():
        w = weights[k]
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != tuple(t.shape):
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise CheckpointError(f"{path}: weight {k!r} has shape {got}; the model needs {tuple(t.shape)}")
    model = build_model(spec, SourceMap(f"{path}#spec"), graph=graph)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: weights do not load: {str(e).splitlines()[0][:300]}") from None
    names = ckpt.get("class_names")
    if names is not None:
        if not (isinstance(names, list) and len(names) == spec.num_classes and all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"{path}: class_names must be {spec.num_classes} strings")
        model.class_names = names
    return model


def load_model(path: str | os.PathLike) -> EfficientDet:
    """A model saved by ``save_model``, weights loaded strictly."""
    return model_from_checkpoint(read_checkpoint(path), path)
