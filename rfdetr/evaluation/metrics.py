"""Metrics read off a finished pycocotools ``COCOeval``, and the ``results.json`` document.

A *summary* (one per IoU type, ``"bbox"`` or ``"segm"``) is a plain JSON-ready dict:

- ``stats``: the 12 COCO numbers as pycocotools computes them (-1 where undefined);
- ``ap``, ``ap50``, ``ap75``, ``ar100``: ``stats[0]``, ``[1]``, ``[2]``, ``[8]`` (undefined -> 0.0);
- ``precision``, ``recall``, ``f1``: the extended metrics of upstream's results.json. At IoU 0.5, area "all",
  100 detections, every class's precision is read at each of COCO's 101 recall thresholds ``r``;
  ``F1 = 2 P r / (P + r)``; the threshold with the best class-mean F1 is chosen and the class-mean
  precision there, that ``r`` and that F1 are reported;
- ``per_class``: ``{name: {"ap", "ap50", "precision", "recall", "f1"}}`` for every class of the
  :class:`~rfdetr.classes.ClassTable` (precision/F1 at the chosen threshold, whose ``r`` is every
  class's ``recall``, as in the fork); a class without ground truth has ``None`` values;
- ``class_map``: the fork's ``results.json`` rows ``{"class", "map@50:95", "map@50", "precision",
  "recall"}`` for the classes with ground truth, then an ``"all"`` row.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np

from rfdetr.classes import ClassTable

STAT_NAMES = (
    "AP@[.5:.95]", "AP@.50", "AP@.75", "AP_small", "AP_medium", "AP_large",
    "AR@1", "AR@10", "AR@100", "AR_small", "AR_medium", "AR_large",
)


def summarize_coco_eval(coco_eval: Any, classes: ClassTable) -> dict[str, Any]:
    """The summary (module docstring) of a ``COCOeval`` after ``evaluate/accumulate/summarize``."""
    stats = [float(s) for s in coco_eval.stats]
    params = coco_eval.params
    precision = np.asarray(coco_eval.eval["precision"], dtype=float)  # [T, R, K, A, M]
    area_index = list(params.areaRngLbl).index("all")
    max_dets = list(params.maxDets)
    det_index = max_dets.index(100) if 100 in max_dets else len(max_dets) - 1
    iou50_index = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    precision = precision[..., area_index, det_index]  # [T, R, K]

    extended = _best_f1(precision[iou50_index], np.asarray(params.recThrs, dtype=float))
    column_of = {int(cid): k for k, cid in enumerate(params.catIds)}
    per_class: dict[str, dict[str, float | None]] = {}
    rows: list[dict[str, Any]] = []
    for entry in classes.entries:
        k = column_of.get(entry.category_id)
        values = _class_values(precision, k, iou50_index, extended)
        per_class[entry.name] = values
        if values["ap"] is not None and values["ap50"] is not None and values["precision"] is not None:
            rows.append({"class": entry.name, "map@50:95": values["ap"], "map@50": values["ap50"],
                         "precision": values["precision"], "recall": values["recall"]})
    summary = {
        "stats": stats,
        "ap": _defined(stats[0]), "ap50": _defined(stats[1]),
        "ap75": _defined(stats[2]), "ar100": _defined(stats[8]),
        "precision": extended["precision"], "recall": extended["recall"], "f1": extended["f1"],
        "per_class": per_class,
    }
    rows.append({"class": "all", "map@50:95": summary["ap"], "map@50": summary["ap50"],
                 "precision": summary["precision"], "recall": summary["recall"]})
    summary["class_map"] = rows
    return summary


def results_json(best_valid: Mapping[str, Any], best_test: Mapping[str, Any] | None = None,
                 epoch: int | None = None) -> dict[str, Any]:
    """The ``results.json`` document from summaries of the chosen (best) epoch.

    ``best_valid``/``best_test`` map IoU type -> summary, as ``CocoEvaluator.summarize`` returns.
    Top-level ``ap`` (AP@[.5:.95]), ``ap50``, ``precision`` and ``recall`` are the validation bbox numbers
    (``map`` repeats AP50 under the name upstream's results.json gives it); with
    ``segm`` summaries a ``masks`` block repeats the keys and adds ``map_test``, ``precision_test``
    and ``recall_test`` (``None`` without a test summary). ``class_map["test"]`` is ``[]`` then.
    """
    if "bbox" not in best_valid:
        raise ValueError(f"results_json needs a bbox summary; got iou types {sorted(best_valid)}")
    test = best_test or {}
    document: dict[str, Any] = _block(best_valid["bbox"], test.get("bbox"))
    if "segm" in best_valid:
        masks = _block(best_valid["segm"], test.get("segm"))
        test_segm = test.get("segm")
        masks["map_test"] = _float_or_none(test_segm["ap50"]) if test_segm else None
        masks["precision_test"] = _float_or_none(test_segm["precision"]) if test_segm else None
        masks["recall_test"] = _float_or_none(test_segm["recall"]) if test_segm else None
        document["masks"] = masks
    if epoch is not None:
        document["epoch"] = int(epoch)
    return document


# ---- helpers -----------------------------------------------------------------------------------
def _block(valid: Mapping[str, Any], test: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "class_map": {"valid": _rows(valid["class_map"]), "test": _rows(test["class_map"]) if test else []},
        "ap": float(valid["ap"]),
        "ap50": float(valid["ap50"]),
        "map": float(valid["ap50"]),
        "precision": float(valid["precision"]),
        "recall": float(valid["recall"]),
    }


def _rows(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{key: (value if key == "class" else _float_or_none(value)) for key, value in row.items()}
            for row in rows]


def _best_f1(precision: np.ndarray, recall_thresholds: np.ndarray) -> dict[str, Any]:
    """Class-mean precision/recall/F1 at the recall threshold maximising the class-mean F1.

    ``precision [R, K]`` at IoU 0.5 (-1 = class without ground truth). Also returns the chosen
    index and the per-class precision/F1 there (NaN for classes without ground truth).
    """
    precision = np.where(precision < 0, np.nan, precision)
    recall = recall_thresholds[:, None]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no class with ground truth
        f1 = 2 * precision * recall / (precision + recall)
        f1 = np.where(np.isnan(f1) & ~np.isnan(precision), 0.0, f1)  # P = r = 0 -> F1 0, not NaN
        macro_f1 = np.nanmean(f1, axis=1) if f1.size else np.full(len(recall_thresholds), np.nan)
    if np.all(np.isnan(macro_f1)):
        empty = np.full(precision.shape[1], np.nan)
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "index": None,
                "class_precision": empty, "class_f1": empty}
    best = int(np.nanargmax(macro_f1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        macro_precision = float(np.nanmean(precision[best]))
    return {"precision": macro_precision, "recall": float(recall_thresholds[best]), "f1": float(macro_f1[best]),
            "index": best, "class_precision": precision[best], "class_f1": f1[best]}


def _class_values(precision: np.ndarray, k: int | None, iou50_index: int,
                  extended: Mapping[str, Any]) -> dict[str, float | None]:
    """AP@[.5:.95], AP50 and the chosen-threshold precision/recall/F1 of column ``k`` of ``[T, R, K]``."""
    if k is None:
        return {"ap": None, "ap50": None, "precision": None, "recall": None, "f1": None}
    column = precision[:, :, k]
    valid = column > -1
    at50 = column[iou50_index]
    has_gt = bool(valid.any())
    return {
        "ap": float(column[valid].mean()) if has_gt else None,
        "ap50": float(at50[at50 > -1].mean()) if (at50 > -1).any() else None,
        "precision": _float_or_none(extended["class_precision"][k]) if has_gt else None,
        "recall": float(extended["recall"]) if has_gt else None,
        "f1": _float_or_none(extended["class_f1"][k]) if has_gt else None,
    }


def _defined(value: float) -> float:
    """pycocotools' -1 ("no ground truth") as 0.0."""
    return float(value) if value >= 0 else 0.0


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value
