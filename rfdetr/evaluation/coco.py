"""COCO evaluation (pycocotools) of per-image detections, boxes and optionally masks.

Feed :class:`CocoEvaluator` the :class:`~rfdetr.models.postprocess.PostProcess` output of each
image (labels are class-head rows; the :class:`~rfdetr.classes.ClassTable` turns them into the
dataset's category ids), then call :meth:`CocoEvaluator.summarize`. The metrics it returns are
described in :mod:`rfdetr.evaluation.metrics`; :func:`results_json` builds ``results.json`` from them.

``segm`` is scored against :func:`segm_ground_truth`: instances without a usable mask (box-only,
:mod:`rfdetr.datasets.coco_masks`) count for ``bbox`` but are ignored by ``segm``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rfdetr.classes import ClassTable
from rfdetr.datasets.coco_masks import box_rle, mask_rle
from rfdetr.evaluation.metrics import STAT_NAMES, results_json, summarize_coco_eval

__all__ = ["CocoEvaluator", "detections_for_image", "results_json", "STAT_NAMES"]

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
MASK_THRESHOLD = 0.5  # probabilities above this are inside the mask


class CocoEvaluator:
    """Collects detections image by image and runs ``COCOeval`` for each IoU type.

    ``coco_gt`` is the split's ground truth (e.g. ``CocoDetection.coco``); ``iou_types`` is
    ``("bbox",)`` or ``("bbox", "segm")`` (``segm`` needs ``masks`` in every result).
    """

    def __init__(self, coco_gt: COCO, classes: ClassTable, iou_types: Sequence[str] = ("bbox",)):
        unknown = [t for t in iou_types if t not in IOU_TYPES]
        if unknown or not iou_types:
            raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}; got {tuple(iou_types)}")
        self.coco_gt = coco_gt
        self.classes = classes
        self.iou_types = tuple(iou_types)
        self._ground_truth = {"bbox": coco_gt}
        if "segm" in self.iou_types:
            self._ground_truth["segm"] = segm_ground_truth(coco_gt)
        self._category_of_label = {e.label: e.category_id for e in classes.entries}
        # image id -> iou type -> detections; a dict so an image fed twice (padded distributed
        # samplers repeat images) counts once.
        self._detections: dict[int, dict[str, list[dict[str, Any]]]] = {}
        self.coco_evals: dict[str, COCOeval] = {}  # filled by summarize(); ``.eval`` is what eval/*.pth hold
        self._warn_about_categories()

    def reset(self) -> None:
        """Forget every detection (to evaluate again with the same ground truth)."""
        self._detections = {}
        self.coco_evals = {}

    def update(self, image_ids: Iterable[int] | torch.Tensor,
               results: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Add one PostProcess-style result per image (see :func:`detections_for_image`)."""
        image_ids = [int(i) for i in (image_ids.tolist() if isinstance(image_ids, torch.Tensor) else image_ids)]
        if len(image_ids) != len(results):
            raise ValueError(f"{len(image_ids)} image ids but {len(results)} results")
        for image_id, result in zip(image_ids, results):
            self._detections[image_id] = {
                iou_type: detections_for_image(image_id, result, self._category_of_label, iou_type)
                for iou_type in self.iou_types
            }

    def summarize(self) -> dict[str, dict[str, Any]]:
        """Run COCOeval per IoU type; returns ``{iou_type: summary}`` (see :mod:`rfdetr.evaluation.metrics`).

        In a distributed run every rank must call it: detections are gathered from all ranks and
        every rank computes (and returns) the same metrics.
        """
        detections = self._gathered()
        image_ids = sorted(detections) or sorted(self.coco_gt.getImgIds())
        summaries: dict[str, dict[str, Any]] = {}
        for iou_type in self.iou_types:
            flat = [d for image_id in sorted(detections) for d in detections[image_id][iou_type]]
            coco_eval, text = self._run_cocoeval(iou_type, flat, image_ids)
            logger.debug("COCOeval %s on %d images, %d detections:\n%s", iou_type, len(image_ids), len(flat), text)
            summaries[iou_type] = summarize_coco_eval(coco_eval, self.classes)
            self.coco_evals[iou_type] = coco_eval
            # DEBUG: a training run prints these in its one summary line per epoch
            logger.debug("%s: AP@[.5:.95] %.4f  AP50 %.4f  AR@100 %.4f", iou_type, summaries[iou_type]["ap"],
                        summaries[iou_type]["ap50"], summaries[iou_type]["ar100"])
        return summaries

    # ---- internals -----------------------------------------------------------------------
    def _gathered(self) -> dict[int, dict[str, list[dict[str, Any]]]]:
        """Every rank's detections, merged (the first rank holding an image wins)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self._detections
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self._detections)
        merged: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for part in parts:
            for image_id, per_type in part.items():
                merged.setdefault(image_id, per_type)
        return merged

    def _run_cocoeval(self, iou_type: str, detections: list[dict[str, Any]],
                      image_ids: list[int]) -> tuple[COCOeval, str]:
        """Evaluate, accumulate and summarize with pycocotools' printing captured."""
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            coco_dt = self._load_results(detections)
            coco_eval = COCOeval(self._ground_truth[iou_type], coco_dt, iouType=iou_type)
            coco_eval.params.imgIds = image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return coco_eval, printed.getvalue()

    def _load_results(self, detections: list[dict[str, Any]]) -> COCO:
        """``coco_gt.loadRes`` on copies; an empty list (which loadRes rejects) gives an empty COCO."""
        if detections:
            return self.coco_gt.loadRes([dict(d) for d in detections])
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(self.coco_gt.dataset.get("images", [])),
                           "categories": copy.deepcopy(self.coco_gt.dataset.get("categories", [])),
                           "annotations": []}
        coco_dt.createIndex()
        return coco_dt

    def _warn_about_categories(self) -> None:
        gt_ids = set(self.coco_gt.getCatIds())
        missing = sorted(set(self._category_of_label.values()) - gt_ids)
        if missing:
            logger.warning("class table category ids %s are not categories of the ground truth; "
                           "their detections are not evaluated", missing)
        annotated = {int(a["category_id"]) for a in self.coco_gt.dataset.get("annotations", [])}
        unpredictable = sorted(annotated - set(self._category_of_label.values()))
        if unpredictable:
            logger.warning("ground-truth category ids %s are not in the class table (%s); they count as "
                           "missed", unpredictable, self.classes.describe())


def segm_ground_truth(coco_gt: COCO) -> COCO:
    """The ground truth of ``segm`` evaluation: a copy of ``coco_gt`` with every segmentation as its RLE.

    An instance without a usable segmentation (:func:`rfdetr.datasets.coco_masks.mask_rle`) becomes a crowd
    region over its box: COCOeval ignores it, so a detection on it is neither a hit nor a false
    positive (and pycocotools never sees a missing, empty or malformed segmentation).
    """
    annotations, box_only = [], 0
    for annotation in coco_gt.dataset.get("annotations", []):
        image = coco_gt.imgs.get(annotation["image_id"], {})
        height, width = image.get("height"), image.get("width")
        if not (isinstance(height, int) and isinstance(width, int)):
            raise ValueError(f"segm evaluation needs the height and width of image {annotation['image_id']}")
        rle, _ = mask_rle(annotation.get("segmentation"), height, width)
        if rle is None:
            box_only += not annotation.get("iscrowd", 0)
            annotations.append({**annotation, "segmentation": box_rle(annotation["bbox"], height, width),
                                "iscrowd": 1})
        else:
            annotations.append({**annotation, "segmentation": rle})
    if box_only:
        logger.info("segm evaluation ignores %d of %d ground-truth instances: they have no usable mask",
                    box_only, len(annotations))
    segm = COCO()
    segm.dataset = {**coco_gt.dataset, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        segm.createIndex()
    return segm


def detections_for_image(image_id: int, result: Mapping[str, torch.Tensor],
                         category_of_label: Mapping[int, int], iou_type: str) -> list[dict[str, Any]]:
    """COCO result records of one image.

    ``result``: ``scores [N]``, ``labels [N]`` (class-head rows), ``boxes [N, 4]`` xyxy pixels of the
    original image and, for ``segm``, ``masks [N, H, W]`` (or ``[N, 1, H, W]``) at the original size:
    bool/integer (non-zero = inside) or float probabilities (> 0.5 = inside). Records carry
    ``bbox`` (xywh) for ``bbox`` and an RLE ``segmentation`` (str counts) for ``segm``.
    """
    scores = result["scores"].detach().float().cpu().tolist()
    labels = result["labels"].detach().cpu().tolist()
    try:
        category_ids = [category_of_label[int(label)] for label in labels]
    except KeyError as error:
        raise ValueError(f"label {error.args[0]} is not a class of the class table "
                         f"(labels {sorted(category_of_label)})") from error
    if iou_type == "bbox":
        boxes = result["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist() if len(boxes) else []
        return [{"image_id": image_id, "category_id": cid, "bbox": box, "score": score}
                for cid, box, score in zip(category_ids, xywh, scores)]
    if iou_type == "segm":
        if "masks" not in result:
            raise ValueError("segm evaluation needs 'masks' in every result")
        rles = encode_masks(result["masks"])
        if len(rles) != len(scores):
            raise ValueError(f"{len(rles)} masks for {len(scores)} detections")
        return [{"image_id": image_id, "category_id": cid, "segmentation": rle, "score": score}
                for cid, rle, score in zip(category_ids, rles, scores)]
    raise ValueError(f"unknown iou type {iou_type!r}; expected one of {IOU_TYPES}")


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """``[N, H, W]`` masks (see :func:`detections_for_image`) -> N JSON-ready RLE dicts."""
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must be [N, H, W] (or [N, 1, H, W]); got shape {tuple(masks.shape)}")
    if len(masks) == 0:
        return []
    masks = masks.detach()
    inside = masks > MASK_THRESHOLD if masks.is_floating_point() else masks != 0
    array = np.asfortranarray(inside.cpu().numpy().astype(np.uint8).transpose(1, 2, 0))  # [H, W, N]
    rles = mask_util.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles
