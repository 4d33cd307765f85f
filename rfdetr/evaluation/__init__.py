"""COCO evaluation: :mod:`~rfdetr.evaluation.coco` scores per-image detections (boxes, masks) with
pycocotools; :mod:`~rfdetr.evaluation.metrics` reads the metrics off the finished evaluation and builds
``results.json``."""

from rfdetr.evaluation.coco import (
    IOU_TYPES,
    MASK_THRESHOLD,
    CocoEvaluator,
    detections_for_image,
    encode_masks,
    segm_ground_truth,
)
from rfdetr.evaluation.metrics import STAT_NAMES, results_json, summarize_coco_eval

__all__ = ["IOU_TYPES", "MASK_THRESHOLD", "STAT_NAMES", "CocoEvaluator", "detections_for_image", "encode_masks",
           "results_json", "segm_ground_truth", "summarize_coco_eval"]
