"""CocoEvaluator and results_json on a tiny in-memory COCO ground truth."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from rfdetr.classes import ClassEntry, ClassTable
from rfdetr.evaluation import CocoEvaluator, coco, detections_for_image, encode_masks, results_json

# Roboflow-style: id 0 is the project ("none" supercategory); real ids have gaps; "fish" has no GT.
CATEGORIES = [
    {"id": 0, "name": "animals", "supercategory": "none"},
    {"id": 3, "name": "cat", "supercategory": "animals"},
    {"id": 7, "name": "dog", "supercategory": "animals"},
    {"id": 9, "name": "bird", "supercategory": "animals"},
    {"id": 12, "name": "fish", "supercategory": "animals"},
]
IMAGES = [{"id": 1, "width": 64, "height": 48}, {"id": 2, "width": 80, "height": 60},
          {"id": 3, "width": 50, "height": 40}]  # image 3 has no ground truth
# (image id, category id, xywh box)
OBJECTS = [(1, 3, [10, 10, 20, 15]), (1, 7, [30, 5, 25, 30]), (2, 3, [5, 5, 40, 30]), (2, 9, [50, 20, 20, 20])]


def _polygon(box: list[int]) -> list[list[float]]:
    x, y, w, h = box
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


@pytest.fixture(scope="module")
def coco_gt() -> COCO:
    annotations = [{"id": i + 1, "image_id": image_id, "category_id": cid, "bbox": box, "area": box[2] * box[3],
                    "iscrowd": 0, "segmentation": _polygon(box)}
                   for i, (image_id, cid, box) in enumerate(OBJECTS)]
    coco = COCO()
    coco.dataset = {"images": IMAGES, "categories": CATEGORIES, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@pytest.fixture(scope="module")
def classes() -> ClassTable:
    return ClassTable.from_categories(CATEGORIES)


def _gt_results(coco: COCO, classes: ClassTable, *, shift: float = 0.0, masks: bool = False,
                relabel: dict[int, int] | None = None, table: ClassTable | None = None) -> tuple[list, list]:
    """PostProcess-style results reproducing the ground truth (optionally shifted / relabelled)."""
    table = table or classes
    ids, results = [], []
    for image in IMAGES:
        anns = coco.imgToAnns[image["id"]]
        cids = [(relabel or {}).get(a["category_id"], a["category_id"]) for a in anns]
        boxes = torch.tensor([[x + shift, y, x + w + shift, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        result = {"scores": torch.ones(len(anns)),
                  "labels": torch.tensor([table.label_of_category(c) for c in cids], dtype=torch.int64),
                  "boxes": boxes}
        if masks:
            stack = [coco.annToMask(a) for a in anns]
            result["masks"] = torch.from_numpy(np.stack(stack) if stack else
                                               np.zeros((0, image["height"], image["width"]), np.uint8)).bool()
        ids.append(image["id"])
        results.append(result)
    return ids, results


def _summarize(coco, classes, ids, results, iou_types=("bbox",), table=None):
    evaluator = CocoEvaluator(coco, table or classes, iou_types)
    evaluator.update(ids, results)
    return evaluator.summarize()


def test_perfect_boxes_and_masks_give_ap_one(coco_gt, classes):
    ids, results = _gt_results(coco_gt, classes, masks=True)
    summary = _summarize(coco_gt, classes, ids, results, ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        s = summary[iou_type]
        assert s["ap"] == pytest.approx(1.0) and s["ap50"] == pytest.approx(1.0) and s["ap75"] == pytest.approx(1.0)
        assert s["stats"][0] == pytest.approx(1.0) and len(s["stats"]) == 12
        assert s["ar100"] == pytest.approx(1.0)
        assert s["precision"] == pytest.approx(1.0) and s["recall"] == pytest.approx(1.0)
        assert s["f1"] == pytest.approx(1.0)
        for name in ("cat", "dog", "bird"):
            assert s["per_class"][name]["ap"] == pytest.approx(1.0)
            assert s["per_class"][name]["ap50"] == pytest.approx(1.0)
        assert s["per_class"]["fish"] == {"ap": None, "ap50": None, "precision": None, "recall": None, "f1": None}
        assert [row["class"] for row in s["class_map"]] == ["cat", "dog", "bird", "all"]


# (image id, category id, xywh box, segmentation) of instances without a usable mask: box-only.
BOX_ONLY = [(1, 9, [40, 30, 10, 10], "missing"), (2, 7, [10, 40, 20, 10], []),
            (2, 3, [60, 5, 10, 10], [[60, 5, 70, 5]]),  # two points (pycocotools would read them as a box)
            (3, 3, [5, 5, 10, 10], [[5, 5, 10, 10, 15, 15]]),  # three points on a line: no area
            (3, 9, [20, 20, 10, 10], {"size": [40, 50], "counts": "not an RLE"})]


def test_box_only_instances_count_for_bbox_and_are_ignored_by_segm(classes):
    annotations = [{"id": i + 1, "image_id": image_id, "category_id": cid, "bbox": box, "area": box[2] * box[3],
                    "iscrowd": 0, "segmentation": _polygon(box)} for i, (image_id, cid, box) in enumerate(OBJECTS)]
    for image_id, cid, box, segmentation in BOX_ONLY:
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cid, "bbox": box,
                            "area": box[2] * box[3], "iscrowd": 0})
        if segmentation != "missing":
            annotations[-1]["segmentation"] = segmentation
    coco = COCO()
    coco.dataset = {"images": IMAGES, "categories": CATEGORIES, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()

    def detections(with_box_only: bool) -> tuple[list, list]:
        """Every usable instance exactly; a box-only one (optionally) with its box filled as the mask."""
        ids, results = [], []
        for image in IMAGES:
            anns = [a for a in coco.imgToAnns[image["id"]] if with_box_only or a["id"] <= len(OBJECTS)]
            masks = np.zeros((len(anns), image["height"], image["width"]), np.uint8)
            for mask, a in zip(masks, anns):
                x, y, w, h = a["bbox"]
                mask[y:y + h, x:x + w] = 1 if a["id"] > len(OBJECTS) else coco.annToMask(a)[y:y + h, x:x + w]
            ids.append(image["id"])
            results.append({"scores": torch.ones(len(anns)), "masks": torch.from_numpy(masks),
                            "labels": torch.tensor([classes.label_of_category(a["category_id"]) for a in anns]),
                            "boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                                                  dtype=torch.float32).reshape(-1, 4)})
        return ids, results

    everything = _summarize(coco, classes, *detections(True), ("bbox", "segm"))
    assert everything["bbox"]["ap"] == pytest.approx(1.0)
    assert everything["segm"]["ap"] == pytest.approx(1.0)  # detections on ignored regions are no false positives
    usable_only = _summarize(coco, classes, *detections(False), ("bbox", "segm"))
    assert usable_only["segm"]["ap"] == pytest.approx(1.0)  # box-only instances are no missed masks
    assert usable_only["bbox"]["ap"] < 1.0  # but missed boxes
    assert "segmentation" not in coco.anns[len(OBJECTS) + 1]  # the ground truth given is left as it was


def test_float_mask_probabilities_are_thresholded(coco_gt, classes):
    ids, results = _gt_results(coco_gt, classes, masks=True)
    for result in results:  # probabilities: 0.9 inside, 0.4 outside
        result["masks"] = result["masks"].float() * 0.5 + 0.4
    assert _summarize(coco_gt, classes, ids, results, ("bbox", "segm"))["segm"]["ap"] == pytest.approx(1.0)


def test_shifted_boxes_score_lower(coco_gt, classes):
    ids, results = _gt_results(coco_gt, classes, shift=3.0)
    summary = _summarize(coco_gt, classes, ids, results)["bbox"]
    assert 0.0 < summary["ap"] < 1.0
    assert summary["ap50"] == pytest.approx(1.0)  # every shifted box still overlaps its object by IoU > 0.5


def test_wrong_class_gets_zero_ap(coco_gt, classes):
    ids, results = _gt_results(coco_gt, classes, relabel={9: 7})  # the bird predicted as a dog
    summary = _summarize(coco_gt, classes, ids, results)["bbox"]
    assert summary["per_class"]["bird"]["ap"] == 0.0 and summary["per_class"]["bird"]["ap50"] == 0.0
    assert summary["per_class"]["cat"]["ap"] == pytest.approx(1.0)
    assert summary["ap"] < 1.0


@pytest.mark.parametrize("fed", [True, False])
def test_empty_predictions_give_zero(coco_gt, classes, fed):
    evaluator = CocoEvaluator(coco_gt, classes, ("bbox", "segm"))
    if fed:
        empty = [{"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4),
                  "masks": torch.zeros(0, im["height"], im["width"])} for im in IMAGES]
        evaluator.update(torch.tensor([im["id"] for im in IMAGES]), empty)
    summary = evaluator.summarize()
    for iou_type in ("bbox", "segm"):
        assert summary[iou_type]["ap"] == 0.0 and summary[iou_type]["ap50"] == 0.0
        assert summary[iou_type]["per_class"]["cat"]["ap"] == 0.0
        assert summary[iou_type]["precision"] == 0.0
    json.dumps(summary, allow_nan=False)


def test_labels_map_to_category_ids_through_the_table(coco_gt, classes):
    assert classes.class_rows == [0, 1, 2, 3]
    records = detections_for_image(1, {"scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 2]),
                                       "boxes": torch.tensor([[1.0, 2.0, 4.0, 7.0], [0.0, 0.0, 1.0, 1.0]])},
                                   {e.label: e.category_id for e in classes.entries}, "bbox")
    assert [r["category_id"] for r in records] == [3, 9]
    assert records[0]["bbox"] == pytest.approx([1.0, 2.0, 3.0, 5.0])
    # A permuted table: its labels mean other classes. Results labelled with it score 1.0 only when
    # evaluated with it; an evaluator that took label + 1 (or label) as category id would fail both.
    permuted = ClassTable(tuple(ClassEntry(label, e.category_id, e.name)
                                for label, e in zip([2, 0, 3, 1], classes.entries)), num_rows=5)
    ids, results = _gt_results(coco_gt, classes, table=permuted)
    assert _summarize(coco_gt, classes, ids, results, table=permuted)["bbox"]["ap"] == pytest.approx(1.0)
    assert _summarize(coco_gt, classes, ids, results)["bbox"]["ap"] < 0.5


def test_unknown_label_is_an_error(coco_gt, classes):
    evaluator = CocoEvaluator(coco_gt, classes)
    bad = {"scores": torch.ones(1), "labels": torch.tensor([4]), "boxes": torch.zeros(1, 4)}  # 4 = spare row
    with pytest.raises(ValueError, match="not a class"):
        evaluator.update([1], [bad])


def test_encode_masks_rle_is_json_ready():
    masks = torch.zeros(2, 1, 6, 5)
    masks[0, 0, 1:3, 2:4] = 1.0
    rles = encode_masks(masks)
    assert len(rles) == 2 and isinstance(rles[0]["counts"], str) and rles[0]["size"] == [6, 5]
    json.dumps(rles)


def test_repeated_and_gathered_images_count_once(coco_gt, classes, monkeypatch):
    ids, results = _gt_results(coco_gt, classes)
    rank0, rank1 = CocoEvaluator(coco_gt, classes), CocoEvaluator(coco_gt, classes)
    rank0.update(ids[:2], results[:2])
    rank1.update(ids[1:], results[1:])  # image 2 on both ranks, as a padded DistributedSampler does

    def all_gather_object(parts, obj):
        parts[:] = [rank0._detections, rank1._detections]

    monkeypatch.setattr(coco.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(coco.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(coco.dist, "all_gather_object", all_gather_object)
    summary = rank0.summarize()["bbox"]
    assert summary["ap"] == pytest.approx(1.0)
    assert len(rank0.coco_evals["bbox"].cocoDt.dataset["annotations"]) == len(OBJECTS)


def test_results_json_shape_uses_the_given_epoch(coco_gt, classes):
    ids, results = _gt_results(coco_gt, classes, masks=True)
    best = _summarize(coco_gt, classes, ids, results, ("bbox", "segm"))
    ids, results = _gt_results(coco_gt, classes, shift=3.0, masks=True)
    worse = _summarize(coco_gt, classes, ids, results, ("bbox", "segm"))

    document = results_json(best, worse, epoch=7)
    assert set(document) == {"class_map", "ap", "ap50", "map", "precision", "recall", "masks", "epoch"}
    assert document["map"] == document["ap50"] == best["bbox"]["ap50"] and document["epoch"] == 7
    shifted = results_json(worse)  # AP@[.5:.95] and AP50 differ: each key holds its own number
    assert shifted["ap"] == worse["bbox"]["ap"] < shifted["ap50"] == worse["bbox"]["ap50"]
    assert [row["class"] for row in document["class_map"]["valid"]] == ["cat", "dog", "bird", "all"]
    assert set(document["class_map"]["valid"][0]) == {"class", "map@50:95", "map@50", "precision", "recall"}
    assert document["class_map"]["valid"][-1]["map@50:95"] == pytest.approx(1.0)
    assert document["class_map"]["test"][-1]["map@50:95"] == pytest.approx(worse["bbox"]["ap"])
    masks = document["masks"]
    assert set(masks) == {"class_map", "ap", "ap50", "map", "precision", "recall", "map_test", "precision_test",
                          "recall_test"}
    assert masks["map"] == pytest.approx(1.0) and masks["map_test"] == worse["segm"]["ap50"]
    assert json.loads(json.dumps(document, allow_nan=False)) == document

    boxes_only = results_json({"bbox": best["bbox"]}, None)
    assert "masks" not in boxes_only and boxes_only["class_map"]["test"] == []
    assert all(type(v) is float for v in (boxes_only["map"], boxes_only["precision"], boxes_only["recall"]))
    json.dumps(boxes_only, allow_nan=False)
