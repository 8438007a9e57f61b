"""Model specs → ``EfficientDet`` modules: the one place detectors are assembled."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import nn

from ..compile import compile_graph, level_size
from ..graph import has_all_levels, input_levels, is_input, output_levels, unroll
from ..errors import EdgError, Problem, RegistryError, SpecError, close_match
from ..ops import CompileOptions
from ..passes import load_graph
from ..scale import resolve
from ..spec import FUSION_ARITY, ModelSpec, SourceMap, known_names, read_spec
from ..spec.builtin import builtin_names, resolve_ref
from .adapter import InputAdapter
from .anchors import Anchors, postprocess
from .backbone import Backbone
from .heads import Head

__all__ = ["EfficientDet", "load_model_spec", "check_model", "build_model", "create_model", "feature_graph", "model_graph"]


def feature_graph(spec: ModelSpec, graph: nx.DiGraph) -> nx.DiGraph:
    """The graph a (resolved) spec's feature network compiles: ``graph`` repeated
    ``fpn_repeat`` times, with the spec's fusion.

    The scaler's depth counts copies of the graph as written; a graph that repeats
    itself (``repeat: 2``) is one layer of both copies."""
    g = unroll(graph)
    g.graph = {**g.graph, "defaults": dict(g.graph["defaults"]), "repeat": spec.fpn_repeat}
    if spec.fusion:
        g.graph["defaults"]["fusion"] = spec.fusion
    if "act" in spec.model_fields_set:  # a spec that names its activation gets it in the graph too
        g.graph["defaults"]["act"] = spec.act
    return g


class EfficientDet(nn.Module):
    """backbone → input adapter → compiled feature network → class and box heads.

    ``forward(images)`` returns the raw per-level ``(class_outputs, box_outputs)``;
    ``detect(images)`` decodes them into boxes, scores and labels.
    """

    def __init__(self, spec: ModelSpec, graph: nx.DiGraph, pretrained_backbone: bool = False):
        super().__init__()
        if spec.head_channels != spec.fpn_channels:
            raise SpecError.single(f"<{spec.name}>", "head_channels must equal fpn_channels (heads read the pyramid)")
        if not has_all_levels(graph):
            raise SpecError.single(f"<{spec.name}>", _not_every_level(repr(graph.graph["name"]), graph))
        self.spec = spec
        self.graph = graph
        # label i is class_names[i]; set from the data's categories by training, kept in checkpoints
        self.class_names: list[str] | None = None
        opts = CompileOptions(bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum, padding=spec.padding)
        lo, hi = graph.graph["levels"]
        self.levels = list(range(lo, hi + 1))
        bb = spec.backbone
        self.backbone = Backbone(bb.name, range(lo, hi + 1), pretrained_backbone or bb.pretrained, bb.drop_path_rate)
        extra = [level for level in self.levels if level not in self.backbone.levels]
        top = self.backbone.channels[self.backbone.levels[-1]]
        self.adapter = InputAdapter(top, extra, spec.fpn_channels, opts)
        in_channels = {level: self.backbone.channels.get(level, spec.fpn_channels) for level in self.levels}
        self.fpn = compile_graph(feature_graph(spec, graph), spec.fpn_channels, in_channels, opts)
        self.anchors = Anchors(self.levels, spec.anchors.scale, spec.anchors.num_scales, spec.anchors.aspect_ratios)
        a = self.anchors.per_position
        ch = spec.head_channels
        self.class_net = Head(self.levels, ch, spec.head_repeat, a, spec.num_classes, spec.act, opts, prior=0.01)
        self.box_net = Head(self.levels, ch, spec.head_repeat, a, 4, spec.act, opts)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.fpn(*self.adapter(self.backbone(images))))

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feats = self.features(images)
        return self.class_net(feats), self.box_net(feats)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, score_threshold: float = 0.05, iou_threshold: float = 0.5,
               max_detections: int = 100) -> list[dict[str, torch.Tensor]]:
        cls, box = self(images)
        return postprocess(cls, box, self.anchors, tuple(images.shape[-2:]), score_threshold, iou_threshold,
                           max_detections)

    def feature_sizes(self, image_size: int | tuple[int, int]) -> list[tuple[int, int]]:
        return [level_size(image_size, level) for level in self.levels]


def load_model_spec(ref: str | os.PathLike) -> tuple[ModelSpec, SourceMap, Path]:
    """Read a model spec by built-in name (``efficientdet-d0``) or path."""
    path = resolve_ref(ref, "specs")
    reading = read_spec(path, ModelSpec)
    return reading.raise_problems(), reading.source, path


def _not_every_level(name: str, graph: nx.DiGraph) -> str:
    lo, hi = graph.graph["levels"]
    return (f"graph {name} takes inputs {list(input_levels(graph))} and gives outputs "
            f"{list(output_levels(graph))}; a detector's feature network takes and gives every level of "
            f"[{lo}, {hi}] (the input adapter makes the levels the backbone lacks, and fpn_repeat chains copies "
            "level by level): use such a graph here, or this one as a neck (efficientdet_graph.neck)")


def model_graph(spec: ModelSpec, src: SourceMap | None = None, base: Path | None = None) -> nx.DiGraph:
    """The feature graph a model spec names, checked against the spec."""
    src = src or SourceMap(f"<{spec.name}>")
    graph = load_graph(spec.graph, relative_to=base, named_by=(src, ("graph",)))
    problems: list[Problem] = []
    if spec.fusion is not None and spec.fusion in FUSION_ARITY:
        # the spec's fusion replaces the graph's default: every node that keeps the
        # default and fuses several inputs must take exactly the fusion's number
        arity = FUSION_ARITY[spec.fusion]
        bad = sorted(v for v in graph if not is_input(graph, v) and graph.nodes[v].get("fusion") is None
                     and graph.in_degree(v) > 1 and graph.in_degree(v) != arity)
        if bad:
            problems.append(src.problem(("fusion",), f"fusion {spec.fusion!r} takes exactly {arity} inputs, but "
                                        f"graph {spec.graph!r} has {len(bad)} node(s) with another number: "
                                        f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"))
    if not has_all_levels(graph):
        problems.append(src.problem(("graph",), _not_every_level(repr(spec.graph), graph)))
    if spec.levels is not None and tuple(spec.levels) != tuple(graph.graph["levels"]):
        problems.append(src.problem(("levels",), f"levels {list(spec.levels)} differ from graph "
                                    f"{spec.graph!r}'s levels {list(graph.graph['levels'])}"))
    for kind, value in (("fusion", spec.fusion), ("act", spec.act)):
        if value is not None and value not in known_names(kind):
            hint = close_match(value, known_names(kind))
            problems.append(src.problem((kind,), f"unknown {kind} {value!r}" + (f" (did you mean {hint!r}?)" if hint else "")))
    if problems:
        raise SpecError(problems)
    return graph


def check_model(spec: ModelSpec, src: SourceMap | None = None, base: Path | None = None,
                graph: nx.DiGraph | None = None) -> tuple[ModelSpec, nx.DiGraph]:
    """The resolved spec and its graph, or a SpecError located in the spec's file:
    everything that can be checked without building a module (the backbone's name
    included) is checked here, so a spec that passes builds."""
    given = spec
    spec = resolve(spec)
    where = src or SourceMap(f"<{spec.name}>")
    if spec.head_channels != spec.fpn_channels:
        key = "head_channels" if "head_channels" in given.model_fields_set else "fpn_channels"
        raise SpecError([where.problem((key,), f"head_channels {spec.head_channels} must equal fpn_channels "
                                       f"{spec.fpn_channels} (the heads read the pyramid)")])
    if graph is None:
        graph = model_graph(spec, where, base)
    import timm

    if not timm.is_model(spec.backbone.name):
        try:
            Backbone(spec.backbone.name, range(0, 1))
        except RegistryError as e:
            raise SpecError([where.problem(("backbone", "name"), str(e))]) from None
    return spec, graph


def build_model(spec: ModelSpec, src: SourceMap | None = None, base: Path | None = None,
                pretrained_backbone: bool = False, graph: nx.DiGraph | None = None) -> EfficientDet:
    """The detector a spec describes; ``graph`` replaces the one the spec names."""
    spec, graph = check_model(spec, src, base, graph)
    try:
        return EfficientDet(spec, graph, pretrained_backbone)
    except RegistryError as e:
        where = src or SourceMap(f"<{spec.name}>")
        raise SpecError([where.problem(("backbone", "name"), str(e))]) from None
    except ValueError as e:
        if isinstance(e, EdgError):
            raise
        where = src or SourceMap(f"<{spec.name}>")
        raise SpecError([where.problem(("backbone",), str(e))]) from None


def create_model(name_or_path: str | os.PathLike = "efficientdet-d0", pretrained_backbone: bool = False,
                 checkpoint: str | os.PathLike | None = None, **overrides: Any) -> EfficientDet:
    """A detector from a built-in spec name (``efficientdet-d0`` ... ``efficientdet-d7x``)
    or a spec file; keyword arguments override spec fields (``num_classes=20``).
    Nothing is downloaded unless ``pretrained_backbone=True``.

    ``checkpoint``: weights from one of our checkpoints (``edg train``, or ``edg convert``
    of an effdet COCO checkpoint); they must fit the spec exactly (``CheckpointError``
    names what does not), and its class names come along."""
    model = _create(name_or_path, pretrained_backbone, **overrides)
    if checkpoint is not None:
        from .checkpoint import CheckpointError, read_checkpoint

        ckpt = read_checkpoint(checkpoint)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise CheckpointError(f"{checkpoint}: not an efficientdet-graph checkpoint (run `edg convert` on effdet files)")
        try:
            missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
        except RuntimeError as e:  # shapes differ: another width, depth or number of classes
            first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
            raise CheckpointError(f"{checkpoint}: weights do not fit {model.spec.name}: {first}") from None
        if missing or unexpected:
            raise CheckpointError(f"{checkpoint}: weights do not fit {model.spec.name}: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        names = ckpt.get("class_names")
        if isinstance(names, list) and len(names) == model.spec.num_classes and all(isinstance(n, str) for n in names):
            model.class_names = names
    return model


def _create(name_or_path: str | os.PathLike, pretrained_backbone: bool, **overrides: Any) -> EfficientDet:
    spec, src, path = load_model_spec(name_or_path)
    if overrides:
        unknown = [k for k in overrides if k not in ModelSpec.model_fields]
        if unknown:
            hint = close_match(unknown[0], ModelSpec.model_fields)
            raise SpecError.single(str(path), f"create_model: unknown field {unknown[0]!r}"
                                   + (f" (did you mean {hint!r}?)" if hint else ""))
        spec = ModelSpec.model_validate({**spec.model_dump(exclude_unset=True), **overrides})
    return build_model(spec, src, path.parent, pretrained_backbone)


def builtin_models() -> list[str]:
    return builtin_names("specs")
