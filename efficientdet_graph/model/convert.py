"""Load effdet (rwightman/efficientdet-pytorch) weights into our EfficientDet models.

effdet and TF-ported checkpoints keep a conv bias right before each BN ("redundant
bias"); our convs have none, so each such bias is folded into the following BN's
running mean (BN(x + b) = BN'(x) with mean' = mean - b), exact in eval mode.

A state dict does not say everything about the network it came from: the pooling
padding and whether the backbone is timm's TF port (``tf_efficientnet_*``) change no
tensor shape. ``model_for_effdet`` therefore takes every structural setting from an
effdet config or from explicit arguments, and refuses (``CheckpointError``) what would
build a different network: effdet's ``efficientdet_d4`` (PyTorch backbone, TF padding)
and ``tf_efficientdet_d4`` (TF backbone and padding) have identical tensors.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from ..compile import module_name
from ..graph import inner_nodes, layer_name
from ..ops.resample import Adapter
from ..spec import input_name
from ..spec.model_spec import AnchorSpec, BackboneSpec, ModelSpec
from .build import EfficientDet, build_model, create_model
from .checkpoint import CheckpointError, read_checkpoint

__all__ = ["effdet_state_dict", "convert_effdet", "load_effdet_checkpoint", "spec_from_effdet_config",
           "model_for_effdet", "has_redundant_bias"]


def load_effdet_checkpoint(path) -> dict[str, torch.Tensor]:
    """The state dict inside an effdet training or release checkpoint."""
    ckpt = read_checkpoint(path)
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found")
    return {k.removeprefix("model.").removeprefix("module."): v for k, v in ckpt.items()}


def effdet_state_dict(sd: dict[str, torch.Tensor], model: EfficientDet) -> tuple[dict[str, torch.Tensor], list[str]]:
    """effdet keys → ours. Returns our state dict and the effdet keys that found no place.
    Heads: ``bn_rep.{repeat}.{level}.bn.*`` or, in effdet's level-first layout (its lite
    and v2 configs), ``bn_rep.{level}.{repeat}.*``."""
    g = model.graph
    lo, hi = g.graph["levels"]
    n_levels = hi - lo + 1
    layer = inner_nodes(g)
    repeat = model.spec.fpn_repeat
    outputs = g.graph["outputs"]

    def ours(r: int, node: str) -> str:  # r is 0-based
        return module_name(layer_name(r + 1, node) if repeat > 1 else node)

    def source(r: int, offset: int) -> str:
        if offset < n_levels:
            level = lo + offset
            if r == 0:
                return input_name(level)
            return layer_name(r, outputs[level]) if repeat > 1 else outputs[level]
        return layer_name(r + 1, layer[offset - n_levels]) if repeat > 1 else layer[offset - n_levels]

    def adapter_prefix(prefix: str) -> str:
        for name, mod in model.get_submodule(prefix).named_modules():
            if isinstance(mod, Adapter):
                return f"{prefix}.{name}" if name else prefix
        raise KeyError(prefix)

    out: dict[str, torch.Tensor] = {}
    biases: dict[str, list[torch.Tensor]] = defaultdict(list)  # BN prefix -> biases to fold
    left: list[str] = []
    head_levels = model.levels
    rules = [
        (r"backbone\.(.+)", lambda m: f"backbone.body.{m[1]}"),
        (r"fpn\.resample\.(\d+)\.conv\.conv\.(weight)", lambda m: f"adapter.P{lo + int(m[1])}.0.conv.{m[2]}"),
        (r"fpn\.resample\.(\d+)\.conv\.bn\.(.+)", lambda m: f"adapter.P{lo + int(m[1])}.0.bn.{m[2]}"),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv_dw\.weight",
         lambda m: f"fpn.{ours(int(m[1]), layer[int(m[2])])}.op.dw.weight"),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv_pw\.weight",
         lambda m: f"fpn.{ours(int(m[1]), layer[int(m[2])])}.op.pw.weight"),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.bn\.(.+)",
         lambda m: f"fpn.{ours(int(m[1]), layer[int(m[2])])}.op.bn.{m[3]}"),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.conv\.weight",
         lambda m: adapter_prefix(f"fpn.{ours(int(m[1]), layer[int(m[2])])}.edges."
                                  f"{module_name(source(int(m[1]), int(m[3])))}") + ".conv.weight"),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.bn\.(.+)",
         lambda m: adapter_prefix(f"fpn.{ours(int(m[1]), layer[int(m[2])])}.edges."
                                  f"{module_name(source(int(m[1]), int(m[3])))}") + f".bn.{m[4]}"),
        (r"(class_net|box_net)\.conv_rep\.(\d+)\.conv_dw\.weight", lambda m: f"{m[1]}.convs.{m[2]}.dw.weight"),
        (r"(class_net|box_net)\.conv_rep\.(\d+)\.conv_pw\.weight", lambda m: f"{m[1]}.convs.{m[2]}.pw.weight"),
        (r"(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\.bn\.(.+)",
         lambda m: f"{m[1]}.bns.{m[2]}.P{head_levels[int(m[3])]}.{m[4]}"),
        (r"(class_net|box_net)\.bn_rep\.(\d+)\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)",
         lambda m: f"{m[1]}.bns.{m[3]}.P{head_levels[int(m[2])]}.{m[4]}"),
        (r"(class_net|box_net)\.predict\.conv_dw\.weight", lambda m: f"{m[1]}.predict.dw.weight"),
        (r"(class_net|box_net)\.predict\.conv_pw\.(weight|bias)", lambda m: f"{m[1]}.predict.pw.{m[2]}"),
    ]
    bias_rules = [
        (r"fpn\.resample\.(\d+)\.conv\.conv\.bias", lambda m: [f"adapter.P{lo + int(m[1])}.0.bn"]),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.conv_pw\.bias",
         lambda m: [f"fpn.{ours(int(m[1]), layer[int(m[2])])}.op.bn"]),
        (r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.conv\.bias",
         lambda m: [adapter_prefix(f"fpn.{ours(int(m[1]), layer[int(m[2])])}.edges."
                                   f"{module_name(source(int(m[1]), int(m[3])))}") + ".bn"]),
        (r"(class_net|box_net)\.conv_rep\.(\d+)\.conv_pw\.bias",
         lambda m: [f"{m[1]}.bns.{m[2]}.P{level}" for level in head_levels]),
    ]
    edge_weight = re.compile(r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.edge_weights")
    for key, value in sd.items():
        m = edge_weight.fullmatch(key)
        if m:
            node = ours(int(m[1]), layer[int(m[2])])
            for i, w in enumerate(value.unbind(0)):
                out[f"fpn.{node}.fuse.weights.{i}"] = w.clone()
            continue
        for pattern, target in bias_rules:
            m = re.fullmatch(pattern, key)
            if m:
                for bn in target(m):
                    biases[bn].append(value)
                break
        else:
            for pattern, target in rules:
                m = re.fullmatch(pattern, key)
                if m:
                    out[target(m)] = value
                    break
            else:
                left.append(key)
    for bn, bs in biases.items():
        key = f"{bn}.running_mean"
        if key not in out:
            left.append(f"(bias for {bn})")
            continue
        out[key] = out[key] - sum(bs)
    return out, left


def convert_effdet(model: EfficientDet, sd: dict[str, torch.Tensor]) -> EfficientDet:
    """Load effdet weights into ``model`` (in place); every tensor must find its place."""
    mapped, left = effdet_state_dict(sd, model)
    own = model.state_dict()
    wrong = [k for k, v in mapped.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    if left or wrong or missing or unexpected:
        def show(xs):
            return ", ".join(xs[:4]) + (f" (+{len(xs) - 4} more)" if len(xs) > 4 else "")
        parts = [f"{name}: {show(xs)}" for name, xs in (
            ("effdet keys with no place", left), ("shape mismatch", wrong),
            ("ours not in the checkpoint", missing), ("mapped keys we lack", unexpected)) if xs]
        raise CheckpointError("the effdet weights do not fit this model; " + "; ".join(parts))
    model.load_state_dict(mapped, strict=True)
    return model


_REDUNDANT_BIAS = re.compile(r"fpn\.(resample\.\d+\.conv\.conv|cell\.\d+\.fnode\.\d+\.after_combine\.conv\.conv_pw)"
                             r"\.bias")
_ACTS = {"swish": "swish", "silu": "swish", "relu": "relu", "relu6": "relu6"}
_FPNS = {None: "fast_normalized", "bifpn_fa": "fast_normalized", "bifpn_sum": "sum"}
# effdet config fields that must hold these values for our model to be the same network
_REQUIRED = {"separable_conv": True, "apply_resample_bn": True, "conv_bn_relu_pattern": False,
             "downsample_type": "max", "upsample_type": "nearest", "backbone_indices": None, "norm_layer": None,
             "fpn_config": None, "min_level": 3}


def has_redundant_bias(sd: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict keeps the TF code's conv bias before each BN (the TF ports and
    effdet's ``efficientdet_d4``/``d5``)."""
    return any(_REDUNDANT_BIAS.fullmatch(k) for k in sd)


def _get(config, key, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def spec_from_effdet_config(config, name: str | None = None) -> ModelSpec:
    """Our model spec for an effdet config (``effdet.get_efficientdet_config(name)`` or a
    dict of its fields): every structural setting is taken from the config; a setting
    our models cannot reproduce is a ``CheckpointError`` naming it."""
    name = name or _get(config, "name") or "effdet"
    refused = [f"{key}={_get(config, key)!r} (we build {want!r})" for key, want in _REQUIRED.items()
               if _get(config, key, want) != want]
    fpn = _get(config, "fpn_name")
    if fpn not in _FPNS:
        refused.append(f"fpn_name={fpn!r} (we convert BiFPNs with fast-normalized or sum fusion: "
                       f"{', '.join(repr(k) for k in _FPNS)})")
    act, head_act = _get(config, "act_type"), _get(config, "head_act_type")
    if act not in _ACTS:
        refused.append(f"act_type={act!r} (we convert {', '.join(sorted(_ACTS))})")
    if head_act not in (None, act):
        refused.append(f"head_act_type={head_act!r} differs from act_type={act!r}")
    backbone_args = dict(_get(config, "backbone_args") or {})
    extra = sorted(set(backbone_args) - {"drop_path_rate"})
    if extra:
        refused.append(f"backbone_args {extra} (timm options we do not pass to the backbone)")
    max_level = _get(config, "max_level")
    graph = {7: "bifpn", 8: "bifpn_p3p8"}.get(max_level)
    if graph is None:
        refused.append(f"max_level={max_level!r} (we have BiFPN graphs on P3-P7 and P3-P8)")
    if refused:
        raise CheckpointError(f"cannot convert effdet config {name!r} into the same network: " + "; ".join(refused))
    ratios = []
    for a in _get(config, "aspect_ratios"):
        if isinstance(a, (int, float)):  # effdet: aspect a -> (sqrt(a), 1/sqrt(a))
            ax = float(a) ** 0.5
            ratios.append((ax, 1.0 / ax))
        else:
            ratios.append((float(a[0]), float(a[1])))
    size = _get(config, "image_size")
    norm = dict(_get(config, "norm_kwargs") or {})
    return ModelSpec(
        name=re.sub(r"[^A-Za-z0-9_.\-]", "-", name)[:64], graph=graph,
        description=f"converted from effdet's {name} config",
        backbone=BackboneSpec(name=_get(config, "backbone_name"),
                              drop_path_rate=float(backbone_args.get("drop_path_rate", 0.0))),
        image_size=int(size) if isinstance(size, int) else int(max(size)),
        fpn_channels=int(_get(config, "fpn_channels")), fpn_repeat=int(_get(config, "fpn_cell_repeats")),
        head_channels=int(_get(config, "fpn_channels")), head_repeat=int(_get(config, "box_class_repeats")),
        fusion=_FPNS[fpn], num_classes=int(_get(config, "num_classes")), act=_ACTS[act],
        anchors=AnchorSpec(scale=float(_get(config, "anchor_scale")), num_scales=int(_get(config, "num_scales")),
                           aspect_ratios=tuple(ratios)),
        padding="same" if _get(config, "pad_type") == "same" else "symmetric",
        bn_eps=float(norm.get("eps", 1e-3)), bn_momentum=float(norm.get("momentum", 0.01)),
    )


def _effdet_config(name: str):
    try:
        from effdet.config.model_config import efficientdet_model_param_dict, get_efficientdet_config
    except ImportError:
        raise CheckpointError("--effdet-config needs the effdet package (pip install effdet)") from None
    if name not in efficientdet_model_param_dict:
        from ..errors import RegistryError

        raise RegistryError("effdet config", name, efficientdet_model_param_dict)
    return get_efficientdet_config(name)


def _num_classes(sd: dict[str, torch.Tensor], per_position: int) -> int | None:
    bias = sd.get("class_net.predict.conv_pw.bias")
    return None if bias is None or bias.numel() % per_position else bias.numel() // per_position


def model_for_effdet(sd: dict[str, torch.Tensor], *, model: str | None = None, effdet_config=None,
                     tf: bool = False, padding: str | None = None, num_classes: int | None = None) -> EfficientDet:
    """Our model for an effdet state dict, with the weights loaded.

    Either ``effdet_config`` (a config name such as ``"efficientdet_d4"``, or the config)
    gives every structural setting, or ``model`` (our spec) does, with ``tf`` (TF backbone
    and padding) or ``padding``. A checkpoint with the TF code's conv biases (all TF
    ports, and effdet's ``efficientdet_d4``/``d5``) needs one of them: its tensors do not
    say which backbone and padding it was trained with."""
    if (model is None) == (effdet_config is None):
        raise CheckpointError("name the network: give our model spec or an effdet config (one of them)")
    if effdet_config is not None:
        if tf or padding:
            raise CheckpointError("--tf and --padding cannot be combined with an effdet config: the config sets them")
        config = _effdet_config(effdet_config) if isinstance(effdet_config, str) else effdet_config
        spec = spec_from_effdet_config(config, effdet_config if isinstance(effdet_config, str) else None)
        anchors = spec.anchors.num_scales * len(spec.anchors.aspect_ratios)
        classes = num_classes or _num_classes(sd, anchors) or spec.num_classes
        net = build_model(spec.model_copy(update={"num_classes": classes}))
    else:
        if tf and padding not in (None, "same"):
            raise CheckpointError("--tf means TF 'same' padding; it contradicts --padding symmetric")
        if not (tf or padding) and has_redundant_bias(sd):
            raise CheckpointError(
                "this checkpoint keeps the TF code's conv bias before each BN, as every tf_efficientdet_* "
                "(TF backbone and TF padding) and effdet's efficientdet_d4/d5 (PyTorch backbone, TF padding) "
                "do; their tensors are identical, so name the network: --effdet-config NAME (e.g. "
                "efficientdet_d4 or tf_efficientdet_d4), --tf, or --padding same")
        net = create_model(model)
        spec = net.spec
        update: dict = {}
        if tf:
            tf_name = "tf_" + spec.backbone.name.removeprefix("tf_")
            update["backbone"] = spec.backbone.model_copy(update={"name": tf_name})
            update["padding"] = "same"
        elif padding:
            update["padding"] = padding
        classes = num_classes or _num_classes(sd, net.anchors.per_position)
        if classes and classes != spec.num_classes:
            update["num_classes"] = classes
        if update:
            net = build_model(spec.model_copy(update=update), graph=net.graph)
    return convert_effdet(net, sd)
