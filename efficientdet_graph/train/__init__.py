"""Stage 9: data (COCO + synthetic), targets and losses, the training loop, evaluation."""

from .data import Augment, CocoDetection, DataError, DataReport, collate, resolve_data
from .evaluate import coco_eval, draw_detections, evaluate, predict_dataset
from .loop import TrainConfig, TrainingDiverged, train
from .results import Requirement, parse_requirement, write_results
from .predict import predict
from .synthetic import make_synthetic
from .targets import DetectionLoss, LossConfig, match_anchors

__all__ = [
    "Augment",
    "CocoDetection",
    "DataError",
    "DataReport",
    "DetectionLoss",
    "LossConfig",
    "Requirement",
    "TrainConfig",
    "TrainingDiverged",
    "coco_eval",
    "collate",
    "draw_detections",
    "evaluate",
    "make_synthetic",
    "match_anchors",
    "parse_requirement",
    "predict",
    "predict_dataset",
    "resolve_data",
    "train",
    "write_results",
]


class _TrainStage(__import__("types").ModuleType):
    """``efficientdet_graph.train`` is this package and, called, the ``train`` function: the
    package's public ``train`` and this stage share one name, and whichever of them an
    import binds first must do both."""

    def __call__(self, cfg: TrainConfig) -> dict:
        return train(cfg)


__import__("sys").modules[__name__].__class__ = _TrainStage
