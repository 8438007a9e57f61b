"""The proxy task: real detection training made cheap, the accuracy objective of a search.

A trial trains only what the search changes -- the feature network (the candidate
graph, its ``repeat`` unrolled, compiled with ``compile_graph``), the input adapter
that makes the levels above the backbone's top, and the class/box heads -- on
backbone features computed once and cached on disk. The backbone is frozen.

Choices, and the measurements behind them (the committed ones are
``search/results/fidelity.json`` and the ``summary`` of
``search/results/search-bifpn_edges.json``; each holds its command, date and machine):

* **Pre-trained, then frozen backbone.** No pretrained weights can be downloaded here,
  and a randomly initialised frozen backbone gives features a small feature network
  learns little from. So once per cache the whole detector (``pretrain_graph`` on the
  proxy backbone) is trained for ``pretrain_epochs`` epochs with the project's normal
  training loop (``efficientdet_graph.train.train``) on the proxy's own training split;
  its backbone is then frozen and its features cached. Building that cache (5 epochs,
  512 images at 128 px, tinynet_e) took 699.5 s wall in ``fidelity.json``
  (``cache_build_seconds``, a loaded 2-core machine). The comparison with a random
  frozen backbone (``pretrain_epochs=0``) is what
  ``python -m efficientdet_graph.search.fidelity --timing`` measures
  (``backbone_choice`` in its output); no run of it is committed.
* **Budget.** With the defaults (4 epochs x 32 steps of 32 samples, 32 channels,
  128 px) a BiFPN trial took 70.2 s wall and FPN 18.3 s in ``fidelity.json`` (one
  thread, loaded machine), and the 30-trial ``make search`` study's median trial took
  26.8 s (``proxy_seconds_median``). BiFPN's mAP@0.5 rose every epoch (0.08, 0.12,
  0.16, 0.17). That is above the ~15 s target; shorter schedules were not measured for
  ranking quality, so ``epochs`` (and ``train_images``) are the knobs to turn first
  where trials must be cheaper.
* **What is cached.** Backbone outputs only (P3-P5 for a stride-32 backbone), for the
  training split, a horizontally flipped copy of it (free augmentation: an epoch sees
  both), and the validation split. Levels above the backbone's top (P6, P7, P8) come
  from the model's ``InputAdapter``, which is part of every trial's model (a 1x1 conv
  is learned there when widths differ), exactly as in the full detector.
* **The score** is COCO mAP@0.5 on the validation split (``train.box_ap``: pycocotools'
  numbers, tested equal to them, without its per-detection Python loops): at proxy
  budgets mAP@[.5:.95] is small (0.07 against mAP@0.5 0.18 for FPN in
  ``fidelity.json``), so mAP@0.5 carries more of the signal (both are returned, with the
  losses ``search/proxy_scores.py`` ranks by).
* **Deterministic.** Weights come from ``torch.manual_seed(seed)`` and the sample order
  from ``seeded_order(n, seed, epoch)``: the same graph and seed give the same result
  on one machine and thread count (CPU).
* **Concurrency.** Several worker processes of one study may construct a ``ProxyTask``
  on the same ``cache_dir`` at once: building is serialised by an ``fcntl`` lock on a
  per-fingerprint lock file, files are written atomically, and a later call finds the
  cache. The cache name carries a hash of every data-relevant setting.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import networkx as nx
import torch
from torch import nn

from .._io import atomic_write_text, locked
from ..compile import compile_graph
from ..errors import EdgError, SearchError, SpecError, close_match
from ..graph import has_all_levels, input_levels, output_levels, unroll
from ..model import Anchors, load_model, postprocess, save_atomic
from ..model.adapter import InputAdapter
from ..model.backbone import Backbone
from ..model.heads import Head
from ..ops import CompileOptions
from ..compile import level_size
from ..train import CocoDetection, DetectionLoss, LossConfig, TrainConfig, make_synthetic, resolve_data, train
from ..train.box_ap import box_ap
from ..train.targets import Assignment
from ..train.data import num_categories, seeded_order

__all__ = ["ProxyConfig", "ProxyResult", "ProxyTask", "ProxyModel", "CACHE_FORMAT", "loader_workers",
           "proxy_setting_problem", "coerce_proxy_settings", "trial_threads"]

CACHE_FORMAT = 2  # bump when the cache's content changes meaning (2: validation targets, for the loss)


@dataclass(frozen=True)
class ProxyConfig:
    """Settings of the proxy task. Data-relevant ones (``DATA_FIELDS``) name the cache."""

    #: ``"synthetic"`` (the built-in shapes set, generated into the cache) or a COCO-format
    #: folder as for ``edg train --data`` (``DIR/train``, ``DIR/val``).
    data: str = "synthetic"
    #: timm CNN used as the frozen backbone (``features_only``); small, so that caching
    #: and pre-training stay cheap.
    backbone: str = "tinynet_e"
    #: square input size; the synthetic set is drawn at this size.
    image_size: int = 128
    #: width of the feature network and heads in a trial (``evaluate(channels=...)``
    #: overrides it).
    channels: int = 32
    #: separable conv layers in each of the class and box heads.
    head_repeat: int = 1
    #: passes over the cached training features (original + flipped copy) per trial.
    epochs: int = 4
    #: score the validation split after every epoch (the history an early-stopping pruner
    #: and the ``extrapolated`` score read); False: after the last epoch only, which saves
    #: a COCO evaluation per epoch (about a third of a short trial on the multiscale task).
    score_every_epoch: bool = True
    #: train a trial on the first N cached training images (and their flipped copies)
    #: only; None: all. Images against epochs at an equal number of steps is a setting, not
    #: a new cache.
    trial_images: int | None = None
    batch_size: int = 32
    #: AdamW peak learning rate (cosine decay, linear warm-up over the first epoch or the
    #: first quarter of the trial, whichever is shorter).
    lr: float = 5e-3
    weight_decay: float = 1e-4
    #: default trial seed (initialisation and sample order); ``evaluate(seed=...)`` overrides.
    seed: int = 0
    #: synthetic set size and class count (ignored for a COCO folder).
    train_images: int = 512
    val_images: int = 128
    classes: int = 3
    #: seed of the synthetic set and of the backbone pre-training (part of the cache name).
    data_seed: int = 0
    #: epochs of full-detector training before the backbone is frozen; 0 keeps the
    #: random (or timm-pretrained) initialisation.
    pretrain_epochs: int = 5
    #: graph and width of the detector used for that pre-training (one layer, one head layer).
    pretrain_graph: str = "fpn"
    pretrain_channels: int = 32
    #: take the backbone weights timm would download (needs network; off here).
    pretrained_backbone: bool = False
    #: a checkpoint whose ``backbone.*`` tensors start the frozen backbone (what ``edg
    #: train --init`` reads: the reference table's shared backbone, pre-trained by
    #: classification with no neck), instead of the pre-training above: the FPN-shaped
    #: pre-training favours FPN-like graphs. ``pretrain_epochs`` is then not used.
    backbone_weights: str | None = None
    #: add a horizontally flipped copy of every training image to the cache.
    flip: bool = True
    #: anchor scale (EfficientDet: 4.0); anchors per position stay 3 scales x 3 ratios.
    anchor_scale: float = 4.0
    act: str = "swish"
    #: BatchNorm momentum of the trial's feature network and heads. The detector's 0.01
    #: suits a long training; after the ~100 steps of a short trial the running statistics
    #: still lean on their initial values (0.99^100 = 37%), and the evaluation, which uses
    #: them, misjudges deep networks most.
    bn_momentum: float = 0.01
    #: detections scored below this are not passed to the COCO evaluation (as ``edg
    #: eval``: after a few epochs focal-loss scores are still small, a 0.05 floor dropped
    #: every detection in a measured BiFPN trial).
    score_threshold: float = 0.001
    #: detections kept per image (synthetic images hold at most 4 objects; 20 instead of
    #: COCO's 100 keeps the per-epoch evaluation cheap).
    max_detections: int = 20
    #: DataLoader worker processes of the backbone pre-training; None: sized by the cores
    #: left (``loader_workers``). Batches are the same with any count, so no result
    #: depends on it (``RESULT_NEUTRAL``).
    loader_workers: int | None = None

    RESULT_NEUTRAL = ("loader_workers",)

    DATA_FIELDS = ("data", "backbone", "image_size", "train_images", "val_images", "classes", "data_seed",
                   "pretrain_epochs", "pretrain_graph", "pretrain_channels", "pretrained_backbone", "flip",
                   "backbone_weights")

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "batch_size", "train_images", "val_images", "classes"):
            if getattr(self, name) < 1:
                raise EdgError(f"ProxyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.trial_images is not None and self.trial_images < 1:
            raise EdgError(f"ProxyConfig.trial_images must be >= 1 (or None: all), got {self.trial_images}")
        for name in ("epochs", "head_repeat", "pretrain_epochs", "loader_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise EdgError(f"ProxyConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.bn_momentum <= 1:
            raise EdgError(f"ProxyConfig.bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if not self.lr > 0:
            raise EdgError(f"ProxyConfig.lr must be > 0, got {self.lr}")

    def fingerprint(self) -> str:
        """Hash of the settings that decide the cached features."""
        data = self.data if self.data == "synthetic" else str(Path(self.data).resolve())
        key = {name: getattr(self, name) for name in self.DATA_FIELDS} | {"data": data, "format": CACHE_FORMAT}
        if self.backbone_weights is not None:  # the weights' content, wherever the file lies
            key["backbone_weights"] = _file_digest(self.backbone_weights)
            key["pretrain_epochs"] = key["pretrain_graph"] = key["pretrain_channels"] = None
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def proxy_setting_problem(key: str) -> str | None:
    """Why ``key`` is no ProxyConfig setting, naming a close one; None when it is one."""
    fields = ProxyConfig.__dataclass_fields__
    if key in fields:
        return None
    hint = close_match(key, fields)
    return f"unknown proxy setting {key!r}" + (f" (did you mean {hint!r}?)" if hint else f"; known: {', '.join(fields)}")


def coerce_proxy_settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` with its strings (a command line's ``KEY=VALUE``, a spec's values) turned
    into each ProxyConfig field's type; ``none`` is None where the field allows it. The
    one reader of proxy settings, so that a study, ``edg search fidelity`` and a variant
    read ``epochs=2`` alike."""
    fields = ProxyConfig.__dataclass_fields__
    out = {}
    for key, value in given.items():
        problem = proxy_setting_problem(key)
        if problem:
            raise SearchError(problem)
        kind = str(fields[key].type)
        out[key] = _coerce(key, kind, value) if isinstance(value, str) else value
    return out


def _coerce(key: str, kind: str, text: str) -> Any:
    if text.strip().lower() == "none" and "None" in kind:
        return None
    try:
        if "bool" in kind:
            flag = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(text.strip().lower())
            if flag is None:
                raise ValueError(text)
            return flag
        if "int" in kind and "float" not in kind:
            return int(text)
        if "float" in kind:
            return float(text)
    except ValueError:
        raise SearchError(f"proxy setting {key}={text!r}: not a {kind}") from None
    return text


def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError as e:
        raise EdgError(f"proxy backbone_weights {path}: cannot be read ({e.strerror or e})") from None


@dataclass(frozen=True)
class ProxyResult:
    """mAP@[.5:.95] and mAP@0.5 after the last epoch run, the epochs run, wall seconds,
    mAP@0.5 after each scored epoch (``history``), the mean training loss of each epoch
    (``train_losses``) and the detection loss on the validation split after the last
    epoch (``val_loss``; the train stage's loss and matching)."""

    map: float
    map50: float
    epochs: int
    seconds: float
    history: tuple[float, ...]
    train_losses: tuple[float, ...] = ()
    val_loss: float = float("nan")
    #: wall seconds by phase: setup (model, matched targets), batches (cached features and
    #: targets indexed), forward (feature network, heads, loss), backward (gradients and
    #: the optimizer's step), evaluate (validation forward, post-processing, COCO)
    phases: dict = field(default_factory=dict)


def _usable_cores() -> int:
    """The cores this process may run on (its affinity, e.g. under taskset), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loader_workers(search_workers: int = 1, cores: int | None = None) -> int:
    """DataLoader workers per search worker from the cores left over by the search
    workers themselves: ``search_workers * loader_workers <= cores``, and at most 2
    (the training default). On 2 cores: 1 search worker gets 1, 2 search workers get 0."""
    cores = _usable_cores() if cores is None else cores
    return max(0, min(2, (cores - search_workers) // max(1, search_workers)))


def trial_threads(search_workers: int = 1, cores: int | None = None) -> int:
    """torch threads of one search worker's trials: the cores shared out among the local
    workers. Left at torch's default (every core) in each, 2 workers on 2 cores ran 4
    compute threads whose OpenMP waits made a trial take 5 times its CPU seconds."""
    cores = _usable_cores() if cores is None else cores
    return max(1, cores // max(1, search_workers))


class ProxyModel(nn.Module):
    """input adapter -> compiled feature network -> class and box heads, on cached
    backbone features (the detector of ``model.EfficientDet`` without its backbone)."""

    def __init__(self, graph: nx.DiGraph, backbone_channels: dict[int, int], channels: int, head_repeat: int,
                 num_classes: int, anchor_scale: float, act: str, bn_momentum: float = 0.01):
        super().__init__()
        lo, hi = graph.graph["levels"]
        if not has_all_levels(graph):
            raise SpecError.single(f"<{graph.graph.get('name', 'graph')}>",
                                   f"graph takes inputs {list(input_levels(graph))} and gives outputs "
                                   f"{list(output_levels(graph))}: the proxy detector needs every level of "
                                   f"[{lo}, {hi}] in and out")
        self.levels = list(range(lo, hi + 1))
        have = sorted(backbone_channels)
        if lo < have[0]:
            raise SpecError.single(f"<{graph.graph.get('name', 'graph')}>",
                                   f"graph levels [{lo}, {hi}] start below the proxy backbone's lowest "
                                   f"cached level P{have[0]} (cached: P{have[0]}-P{have[-1]})")
        opts = CompileOptions(bn_momentum=bn_momentum)
        self.inputs = [level for level in self.levels if level in backbone_channels]
        extra = [level for level in self.levels if level not in backbone_channels]
        top = backbone_channels[self.inputs[-1]]
        self.adapter = InputAdapter(top, extra, channels, opts)
        in_channels = {level: backbone_channels.get(level, channels) for level in self.levels}
        self.fpn = compile_graph(unroll(graph), channels, in_channels, opts)
        self.anchors = Anchors(self.levels, anchor_scale, 3, ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4)))
        a = self.anchors.per_position
        self.class_net = Head(self.levels, channels, head_repeat, a, num_classes, act, opts, prior=0.01)
        self.box_net = Head(self.levels, channels, head_repeat, a, 4, act, opts)

    def forward(self, feats: dict[int, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pyramid = list(self.fpn(*self.adapter([feats[level] for level in self.inputs])))
        return self.class_net(pyramid), self.box_net(pyramid)


class ProxyTask:
    """Prepares data, the frozen backbone and its cached features once per ``cache_dir``
    and config fingerprint; ``evaluate(graph)`` then trains and scores one architecture."""

    def __init__(self, config: ProxyConfig, cache_dir: str | os.PathLike, search_workers: int = 1):
        self.config = config
        self.cache_dir = Path(cache_dir)
        self.loader_workers = (config.loader_workers if config.loader_workers is not None
                               else loader_workers(search_workers))
        fp = config.fingerprint()
        self.cache_path = self.cache_dir / f"proxy-{fp}.pt"
        self.builds_path = self.cache_dir / f"proxy-{fp}.builds.json"
        with locked(self.cache_dir / f"proxy-{fp}.lock"):
            if not self.cache_path.exists():
                self._build(fp)
        cache = torch.load(self.cache_path, map_location="cpu", weights_only=True)
        if cache.get("format") != CACHE_FORMAT:
            raise EdgError(f"{self.cache_path}: proxy cache of another format; delete it to rebuild")
        self.backbone_channels: dict[int, int] = {int(k): v for k, v in cache["channels"].items()}
        self.num_classes: int = cache["num_classes"]
        self.train_feats: dict[int, torch.Tensor] = {int(k): v for k, v in cache["train"].items()}
        self.train_targets: list[dict] = cache["train_targets"]
        self.val_feats: dict[int, torch.Tensor] = {int(k): v for k, v in cache["val"].items()}
        self.val_targets: list[dict] = cache["val_targets"]
        self.val_meta: list[dict] = cache["val_meta"]
        self.val_annotations = self.cache_dir / cache["val_annotations"]
        self.category_ids: list[int] = list(cache["category_ids"])
        self.build_seconds: float = cache["build_seconds"]
        self.loss_config = LossConfig()
        self._target_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._gts: dict[int, list[dict]] | None = None

    # -- building the cache -------------------------------------------------------------

    def _build(self, fp: str) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        work = self.cache_dir / f"proxy-{fp}.work"
        if work.exists():  # left by a process killed mid-build: start clean
            shutil.rmtree(work)
        if cfg.data == "synthetic":
            root = make_synthetic(work / "data", cfg.train_images, cfg.val_images, cfg.image_size, cfg.classes,
                                  cfg.data_seed)
        else:
            root = Path(cfg.data)
        train_ann, train_img = resolve_data(root, "train")
        val_ann, val_img = resolve_data(root, "val")
        num_classes = num_categories(train_ann)
        backbone = self._pretrained_backbone(root, num_classes, work)
        backbone.eval()
        for p in backbone.parameters():
            p.requires_grad_(False)
        train_set = CocoDetection(train_ann, train_img, cfg.image_size, train=False)
        val_set = CocoDetection(val_ann, val_img, cfg.image_size, train=False)
        train_feats, train_targets = self._extract(backbone, train_set, flip=cfg.flip)
        val_feats, val_targets = self._extract(backbone, val_set, flip=False)
        val_meta = [{"image_id": t["image_id"], "scale": float(t["scale"]), "orig_size": list(t["orig_size"]),
                     } for t in (val_set[i][1] for i in range(len(val_set)))]
        ann_name = f"proxy-{fp}.val.json"
        # coco_eval reads only the images the proxy scores; keep its annotation file with the cache
        shutil.copyfile(val_ann, self.cache_dir / f".{ann_name}.tmp")
        os.replace(self.cache_dir / f".{ann_name}.tmp", self.cache_dir / ann_name)
        payload = {
            "format": CACHE_FORMAT,
            "config": {k: v for k, v in asdict(cfg).items() if k in cfg.DATA_FIELDS},
            "channels": {int(k): int(v) for k, v in backbone.channels.items()},
            "num_classes": num_classes,
            "category_ids": list(val_set.category_ids),
            "train": train_feats,
            "train_targets": train_targets,
            "val": val_feats,
            "val_targets": val_targets,
            "val_meta": val_meta,
            "val_annotations": ann_name,
            "build_seconds": time.perf_counter() - t0,
        }
        save_atomic(payload, self.cache_path)
        builds = json.loads(self.builds_path.read_text())["builds"] if self.builds_path.exists() else 0
        atomic_write_text(self.builds_path, json.dumps({"builds": builds + 1}))
        shutil.rmtree(work, ignore_errors=True)

    def _pretrained_backbone(self, root: Path, num_classes: int, work: Path) -> Backbone:
        cfg = self.config
        backbone = Backbone(cfg.backbone, range(3, 8), pretrained=cfg.pretrained_backbone)
        if cfg.backbone_weights is not None:
            return self._load_backbone(backbone, Path(cfg.backbone_weights), cfg.backbone)
        if cfg.pretrain_epochs == 0:
            return backbone
        spec = work / "pretrain.yaml"
        atomic_write_text(spec, json.dumps({  # JSON is YAML: no hand-written quoting
            "name": "proxy-pretrain", "graph": cfg.pretrain_graph,
            "backbone": {"name": cfg.backbone, "pretrained": cfg.pretrained_backbone},
            "image_size": cfg.image_size, "levels": [3, 7], "fpn_channels": cfg.pretrain_channels,
            "fpn_repeat": 1, "head_repeat": 1, "num_classes": num_classes,
        }))
        out = work / "pretrain"
        batch = min(16, cfg.train_images)
        with torch.random.fork_rng(devices=[]):
            done = train(TrainConfig(model=str(spec), data=str(root), out=str(out), epochs=cfg.pretrain_epochs,
                                     batch_size=batch, device="cpu", seed=cfg.data_seed, eval_every=10**9,
                                     quiet=True, ema_decay=0.99, workers=self.loader_workers))
        if "interrupted" in done:
            # train() takes SIGTERM/SIGINT as "save and stop": a cut-short pre-training must
            # not become the cache every later trial reads, and the worker must stop
            raise KeyboardInterrupt(f"{done['interrupted']} while pre-training the proxy backbone")
        detector = load_model(out / "last.pt")
        backbone.load_state_dict(detector.backbone.state_dict())
        return backbone

    @staticmethod
    def _load_backbone(backbone: Backbone, path: Path, name: str) -> Backbone:
        from ..model.checkpoint import read_checkpoint

        ckpt = read_checkpoint(path)
        state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        state = state if isinstance(state, dict) else {}
        weights = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        if not weights:
            raise EdgError(f"proxy backbone_weights {path}: no backbone.* tensors in its state_dict")
        try:
            backbone.load_state_dict(weights)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise EdgError(f"proxy backbone_weights {path}: not weights of this proxy's backbone "
                           f"{name!r} ({first})") from None
        return backbone

    @torch.no_grad()
    def _extract(self, backbone: Backbone, data: CocoDetection, flip: bool
                 ) -> tuple[dict[int, torch.Tensor], list[dict]]:
        feats: dict[int, list[torch.Tensor]] = {level: [] for level in backbone.levels}
        targets: list[dict] = []
        for variant in ((False, True) if flip else (False,)):
            for start in range(0, len(data), 32):
                samples = [data[i] for i in range(start, min(len(data), start + 32))]
                images = torch.stack([s[0] for s in samples])
                if variant:
                    images = images.flip(-1)
                for level, f in zip(backbone.levels, backbone(images)):
                    feats[level].append(f.contiguous())
                for _, t in samples:
                    boxes = t["boxes"].clone()
                    if variant:
                        w = images.shape[-1]
                        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
                    targets.append({"boxes": boxes.reshape(-1, 4), "labels": t["labels"].clone()})
        return {level: torch.cat(fs) for level, fs in feats.items()}, targets

    @property
    def builds(self) -> int:
        """How many times this cache was built (1 unless it was deleted in between)."""
        return json.loads(self.builds_path.read_text())["builds"] if self.builds_path.exists() else 0

    # -- one trial ------------------------------------------------------------------------

    def build_model(self, graph: nx.DiGraph, channels: int | None = None) -> ProxyModel:
        """The trial's model; a graph that cannot build or run raises ``SpecError``/``EdgError``."""
        cfg = self.config
        name = f"<{graph.graph.get('name', 'graph')}>"
        try:
            model = ProxyModel(graph, self.backbone_channels, channels or cfg.channels, cfg.head_repeat,
                               self.num_classes, cfg.anchor_scale, cfg.act, cfg.bn_momentum)
        except EdgError:
            raise
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise SpecError.single(name, f"the graph cannot be built for the proxy ({type(e).__name__}: {e})") from None
        try:  # a graph that compiles but cannot run (sizes that do not line up) fails here, not mid-training
            with torch.no_grad():
                cls_out, _ = model.eval()(self._batch(self.val_feats, [0]))
        except RuntimeError as e:
            raise SpecError.single(name, f"the graph does not run on the proxy's features ({e})") from None
        got = [tuple(c.shape[-2:]) for c in cls_out]
        if got != self._sizes(model.levels):
            raise SpecError.single(name, f"the graph's outputs have sizes {got}, expected {self._sizes(model.levels)}")
        return model

    def _sizes(self, levels: list[int]) -> list[tuple[int, int]]:
        return [level_size(self.config.image_size, level) for level in levels]

    def _targets(self, model: ProxyModel, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample of ``split`` (train, val) and anchor: the class (-1 negative, -2
        ignored) and box codes, matched once per anchor layout by the train stage's own
        ``DetectionLoss.assign`` (the same matching, anchor placement included, as ``edg train``)."""
        key = (split, *model.levels)
        if key not in self._target_cache:
            targets = self.train_targets if split == "train" else self.val_targets
            loss = DetectionLoss(model.anchors, self.num_classes, self.loss_config)
            sizes, side = self._sizes(model.levels), (self.config.image_size, self.config.image_size)
            labels, codes = [], []
            for start in range(0, len(targets), 256):
                a = loss.assign(targets[start:start + 256], sizes, image_size=side)
                dense = torch.zeros(*a.labels.shape, 4)
                dense[a.labels >= 0] = a.codes  # codes come in the order of labels >= 0
                labels.append(a.labels)
                codes.append(dense)
            self._target_cache[key] = (torch.cat(labels), torch.cat(codes))
        return self._target_cache[key]

    def _loss(self, cls_outputs: list[torch.Tensor], box_outputs: list[torch.Tensor], labels: torch.Tensor,
              codes: torch.Tensor, loss: DetectionLoss) -> torch.Tensor:
        """The train stage's ``DetectionLoss``, given the batch's pre-matched targets."""
        pos = labels >= 0
        return loss(cls_outputs, box_outputs, assignment=Assignment(labels, codes[pos], pos.sum().float()))["loss"]

    @staticmethod
    def _batch(feats: dict[int, torch.Tensor], idx: list[int]) -> dict[int, torch.Tensor]:
        index = torch.tensor(idx)
        return {level: f.index_select(0, index) for level, f in feats.items()}

    def evaluate(self, graph: nx.DiGraph, *, channels: int | None = None, seed: int | None = None,
                 report: Callable[[int, float], None] | None = None, epochs: int | None = None) -> ProxyResult:
        """Train ``graph`` (+ adapter + heads) on the cached features and score it.

        After every epoch the validation mAP@0.5 is computed and ``report(epoch, map50)``
        called (1-based epoch); whatever ``report`` raises (Optuna's ``TrialPruned``)
        propagates and ends the trial. ``epochs`` overrides the config (0: score the
        untrained model once).
        """
        cfg = self.config
        seed = cfg.seed if seed is None else seed
        epochs = cfg.epochs if epochs is None else epochs
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.build_model(graph, channels)
            labels, codes = self._targets(model)
            loss_fn = DetectionLoss(model.anchors, self.num_classes, self.loss_config)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            n = len(self.train_targets)
            pool = self._trial_pool(n)
            steps = max(1, len(pool) // cfg.batch_size)
            total = steps * max(1, epochs)
            # one epoch of linear warm-up, but at most a quarter of the run: a one- or
            # two-epoch trial would otherwise spend all or half of it warming up
            warmup = max(1, min(steps, total // 4))

            def lr_at(step: int) -> float:
                if step < warmup:
                    return 0.1 + 0.9 * step / warmup
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
            history: list[float] = []
            losses: list[float] = []
            phases = {"setup": time.perf_counter() - t0, "batches": 0.0, "forward": 0.0, "backward": 0.0,
                      "evaluate": 0.0}

            def clock(phase: str, since: float) -> float:
                now = time.perf_counter()
                phases[phase] += now - since
                return now

            scores = {"map": 0.0, "map50": 0.0, "loss": float("nan")}
            if epochs == 0:
                scores = self._score(model)
            for epoch in range(epochs):
                model.train()
                order = [pool[i] for i in seeded_order(len(pool), seed, epoch)]
                total_loss = 0.0
                for i in range(steps):
                    t = time.perf_counter()
                    idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                    feats = self._batch(self.train_feats, idx)
                    index = torch.tensor(idx)
                    batch_labels, batch_codes = labels[index], codes[index]
                    t = clock("batches", t)
                    cls_out, box_out = model(feats)
                    loss = self._loss(cls_out, box_out, batch_labels, batch_codes, loss_fn)
                    if not torch.isfinite(loss):
                        raise EdgError(f"proxy training diverged (loss {loss.item()}) at epoch {epoch + 1}; "
                                       "lower ProxyConfig.lr")
                    t = clock("forward", t)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                    opt.step()
                    sched.step()
                    total_loss += loss.item()
                    clock("backward", t)
                losses.append(total_loss / steps)
                if not cfg.score_every_epoch and epoch < epochs - 1:
                    continue
                t = time.perf_counter()
                scores = self._score(model)
                clock("evaluate", t)
                history.append(scores["map50"])
                if report is not None:
                    report(epoch + 1, scores["map50"])
        return ProxyResult(map=scores["map"], map50=scores["map50"], epochs=len(losses),
                           seconds=time.perf_counter() - t0, history=tuple(history), train_losses=tuple(losses),
                           val_loss=scores["loss"], phases={k: round(v, 3) for k, v in phases.items()})

    def _trial_pool(self, n: int) -> list[int]:
        """The cached training samples a trial draws from: all, or the first
        ``trial_images`` images and their flipped copies (which follow the originals)."""
        k = self.config.trial_images
        if k is None:
            return list(range(n))
        half = n // 2 if self.config.flip else n
        k = min(k, half)
        return list(range(k)) + (list(range(half, half + k)) if self.config.flip else [])

    @torch.no_grad()
    def _score(self, model: ProxyModel) -> dict[str, float]:
        model.eval()
        size = (self.config.image_size, self.config.image_size)
        dets: dict[int, list[dict]] = {}
        labels, codes = self._targets(model, "val")
        loss_fn = DetectionLoss(model.anchors, self.num_classes, self.loss_config)
        loss_sum = 0.0
        for start in range(0, len(self.val_meta), 64):
            idx = list(range(start, min(len(self.val_meta), start + 64)))
            cls_out, box_out = model(self._batch(self.val_feats, idx))
            index = torch.tensor(idx)
            loss_sum += self._loss(cls_out, box_out, labels[index], codes[index], loss_fn).item() * len(idx)
            found = postprocess(cls_out, box_out, model.anchors, size, score_threshold=self.config.score_threshold,
                                max_detections=self.config.max_detections)
            for det, j in zip(found, idx):
                meta = self.val_meta[j]
                h, w = meta["orig_size"]
                boxes = det["boxes"] / meta["scale"]
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
                dets[meta["image_id"]] = [
                    {"category_id": self.category_ids[label], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s}
                    for (x0, y0, x1, y1), s, label in zip(boxes.tolist(), det["scores"].tolist(),
                                                          det["labels"].tolist())]
        # at most 100 detections per image and class, as COCO counts them
        metrics = box_ap(self._val_gts(), dets, self.category_ids, [m["image_id"] for m in self.val_meta],
                         max_dets=100)
        # as coco_eval reports it: no category with ground truth (pycocotools' -1) is 0
        return {"map": max(0.0, metrics["map"]), "map50": max(0.0, metrics["map50"]),
                "loss": loss_sum / max(1, len(self.val_meta))}

    def _val_gts(self) -> dict[int, list[dict]]:
        """The validation annotations by image (read once): what pycocotools would read."""
        if self._gts is None:
            gts: dict[int, list[dict]] = {}
            for a in json.loads(self.val_annotations.read_text())["annotations"]:
                gts.setdefault(a["image_id"], []).append(a)
            self._gts = gts
        return self._gts


