"""Variants by pruning: shrink the feature network's width with torch-pruning.

Every node of a feature network is coupled to every other through the fusions (they
add tensors), and its outputs feed the heads' shared convs, so one ratio shrinks the
whole pyramid and the heads together; the backbone and the prediction layers keep
their shapes. The result has one width throughout, so it is again a model our specs
describe (``fpn_channels`` = the new width) and saves, loads and exports like any other.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .errors import EdgError
from .model import EfficientDet, build_model
from .profile import count_flops, count_params

__all__ = ["PruneReport", "prune_model"]


@dataclass(frozen=True)
class PruneReport:
    channels_before: int
    channels_after: int
    params_before: int
    params_after: int
    fpn_params_before: int
    fpn_params_after: int
    flops_before: int
    flops_after: int
    image_size: int


def prune_model(model: EfficientDet, ratio: float, image_size: int | None = None) -> tuple[EfficientDet, PruneReport]:
    """A copy of ``model`` with its feature network and heads ``ratio`` narrower (by L2
    magnitude of the weights), and what that saved."""
    import torch_pruning as tp

    if not 0.0 < ratio < 1.0:
        raise EdgError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")
    size = image_size or min(model.spec.image_size, 256)
    example = torch.zeros(1, 3, size, size)
    model = model.eval()
    before = (count_params(model), count_params(model.fpn), count_flops(model, (example,), "cpu").total)
    pruned = build_model(model.spec, graph=model.graph)
    pruned.load_state_dict(model.state_dict())
    pruned.eval()
    ignored = [pruned.backbone, pruned.class_net.predict.pw, pruned.box_net.predict.pw]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scalar fusion weights have no channel dim; tp says so
        pruner = tp.pruner.MetaPruner(
            pruned, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
            ignored_layers=ignored, round_to=8 if model.spec.fpn_channels >= 16 else 1,
        )
        pruner.step()
    width = pruned.class_net.convs[0].pw.out_channels if len(pruned.class_net.convs) else None
    width = width or next(b.num_features for b in pruned.fpn.modules() if isinstance(b, torch.nn.BatchNorm2d))
    spec = pruned.spec.model_copy(update={"fpn_channels": width, "head_channels": width,
                                          "name": f"{model.spec.name}-pruned{int(round(ratio * 100))}"})
    result = build_model(spec, graph=model.graph)
    state = pruned.state_dict()
    expected = result.state_dict()
    wrong = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    if wrong:
        raise EdgError(f"pruning left uneven widths that no spec describes (e.g. {wrong[0]}); try another ratio")
    result.load_state_dict(state)
    after = (count_params(result), count_params(result.fpn), count_flops(result.eval(), (example,), "cpu").total)
    return result, PruneReport(model.spec.fpn_channels, width, before[0], after[0], before[1], after[1],
                               before[2], after[2], size)
