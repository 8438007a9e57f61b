"""Stage 9: data (COCO + synthetic), targets and losses, the training loop, evaluation."""

from .data import CocoDetection, DataError, DataReport, collate, resolve_data
from .evaluate import coco_eval, draw_detections, evaluate, predict_dataset
from .loop import TrainConfig, TrainingDiverged, train
from .results import Requirement, parse_requirement, write_results
from .synthetic import make_synthetic
from .targets import DetectionLoss, LossConfig, match_anchors

__all__ = [
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
    "predict_dataset",
    "resolve_data",
    "train",
    "write_results",
]
