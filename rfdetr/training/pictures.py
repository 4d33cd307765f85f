"""End-of-run pictures of the best weights on the validation split: ``val_predictions.jpg`` (up to
16 images: ground truth in white, predictions with class, score and mask) and
``confusion_matrix.png`` at the score threshold that maximises F1 on the same images.

Matching for both (as Ultralytics draws it): a prediction and a ground-truth object of any class
pair up greedily by IoU >= 0.5, highest IoU first; the confusion matrix counts each pair under
(predicted class, true class), an unpaired prediction under (class, background) and a missed
object under (background, class).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from rfdetr.classes import ClassTable
from rfdetr.training.plots import save_atomically, write_confusion_plot
from rfdetr.util.box_ops import box_iou

logger = logging.getLogger(__name__)

GRID_IMAGES = 16
TILE = 320
MAX_IMAGES = 500  # images scored for the threshold and the confusion matrix
IOU_MATCH = 0.5


@dataclass
class ImageResult:
    pixels: np.ndarray | None  # H x W x 3 uint8, kept for the grid only
    true_boxes: torch.Tensor
    true_labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None


def collect(model: torch.nn.Module, dataset, postprocess: Callable, class_rows: list[int], device: torch.device,
            autocast: Callable) -> list[ImageResult]:
    """The model's detections (all selected queries) and the ground truth of up to MAX_IMAGES images."""
    results = []
    model.eval()
    for index in range(min(len(dataset), MAX_IMAGES)):
        raw = dataset.load_image(index)
        pixels = _uint8(raw)
        height, width = pixels.shape[:2]
        truth = dataset.load_target(index, width, height)
        image, _ = dataset[index]
        with torch.inference_mode(), autocast():
            outputs = model(image[None].to(device))
        outputs = {k: v.float() if k in ("pred_logits", "pred_boxes") else v for k, v in outputs.items()}
        found = postprocess(outputs, torch.tensor([[height, width]], device=device), class_rows=class_rows)[0]
        masks = found.get("masks")
        results.append(ImageResult(pixels if index < GRID_IMAGES else None, truth["boxes"], truth["labels"],
                                   found["boxes"].cpu(), found["scores"].cpu(), found["labels"].cpu(),
                                   None if masks is None else masks.cpu()))
    return results


def pairs(boxes: torch.Tensor, true_boxes: torch.Tensor) -> list[tuple[int, int]]:
    """Greedy (prediction, truth) pairs with IoU >= IOU_MATCH, highest IoU first, each used once."""
    if len(boxes) == 0 or len(true_boxes) == 0:
        return []
    iou, _ = box_iou(boxes, true_boxes)
    candidates = (iou >= IOU_MATCH).nonzero().tolist()
    candidates.sort(key=lambda rc: -float(iou[rc[0], rc[1]]))
    used_p, used_t, matched = set(), set(), []
    for p, t in candidates:
        if p not in used_p and t not in used_t:
            used_p.add(p)
            used_t.add(t)
            matched.append((p, t))
    return matched


def best_f1_threshold(results: Sequence[ImageResult]) -> float:
    """The score threshold (0.05 .. 0.95 in steps of 0.05) with the highest F1 of class-correct pairs."""
    best, best_f1 = 0.5, -1.0
    truths = sum(len(r.true_labels) for r in results)
    for threshold in np.arange(0.05, 0.951, 0.05):
        hits = kept = 0
        for r in results:
            keep = r.scores >= threshold
            boxes, labels = r.boxes[keep], r.labels[keep]
            kept += int(keep.sum())
            hits += sum(int(labels[p] == r.true_labels[t]) for p, t in pairs(boxes, r.true_boxes))
        f1 = 2 * hits / max(1, kept + truths)
        if f1 > best_f1 + 1e-9:
            best, best_f1 = float(threshold), f1
    return round(best, 2)


def confusion_matrix(results: Sequence[ImageResult], rows: list[int], threshold: float) -> np.ndarray:
    """``[C + 1, C + 1]`` counts over the class rows ``rows`` (index = position in ``rows``; last = background)."""
    position = {row: i for i, row in enumerate(rows)}
    background = len(rows)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    for r in results:
        keep = r.scores >= threshold
        boxes, labels = r.boxes[keep], r.labels[keep]
        matched = pairs(boxes, r.true_boxes)
        for p, t in matched:
            matrix[position[int(labels[p])], position[int(r.true_labels[t])]] += 1
        for p in set(range(len(boxes))) - {p for p, _ in matched}:
            matrix[position[int(labels[p])], background] += 1
        for t in set(range(len(r.true_boxes))) - {t for _, t in matched}:
            matrix[background, position[int(r.true_labels[t])]] += 1
    return matrix


def write_prediction_grid(results: Sequence[ImageResult], classes: ClassTable, threshold: float, path: Path) -> None:
    """Up to GRID_IMAGES images in a square-ish grid of TILE-pixel tiles (aspect kept, letterboxed)."""
    import supervision as sv
    from PIL import Image

    shown = [r for r in results if r.pixels is not None][:GRID_IMAGES]
    columns = math.ceil(math.sqrt(len(shown)))
    rows = math.ceil(len(shown) / columns)
    canvas = Image.new("RGB", (columns * TILE, rows * TILE), (24, 24, 24))
    for i, r in enumerate(shown):
        keep = r.scores >= threshold
        masks = None if r.masks is None else r.masks[keep[:len(r.masks)]].numpy().astype(bool)
        detections = sv.Detections(xyxy=r.boxes[keep].numpy().astype(np.float32), confidence=r.scores[keep].numpy(),
                                   class_id=r.labels[keep].numpy().astype(int), mask=masks)
        picture = r.pixels.copy()
        if masks is not None and len(detections):
            picture = sv.MaskAnnotator(opacity=0.45).annotate(picture, detections)
        truth = sv.Detections(xyxy=r.true_boxes.numpy().astype(np.float32),
                              class_id=r.true_labels.numpy().astype(int))
        picture = sv.BoxAnnotator(color=sv.Color.WHITE, thickness=1).annotate(picture, truth)
        picture = sv.BoxAnnotator(thickness=2).annotate(picture, detections)
        labels = [f"{classes.name_of(int(c))} {s:.2f}" for c, s in zip(detections.class_id, detections.confidence)]
        picture = sv.LabelAnnotator(text_scale=0.35, text_padding=2).annotate(picture, detections, labels=labels)
        tile = Image.fromarray(picture)
        scale = TILE / max(tile.size)  # small images grow to the tile, large ones shrink
        tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))), Image.BILINEAR)
        canvas.paste(tile, ((i % columns) * TILE + (TILE - tile.width) // 2,
                            (i // columns) * TILE + (TILE - tile.height) // 2))
    save_atomically(path, lambda temporary: canvas.save(temporary, format="JPEG", quality=90))


def write_end_of_run_pictures(model: torch.nn.Module, dataset, classes: ClassTable, postprocess: Callable,
                              device: torch.device, autocast: Callable, output_dir: Path) -> float:
    """``val_predictions.jpg`` and ``confusion_matrix.png`` of ``model`` on ``dataset``; returns the threshold."""
    results = collect(model, dataset, postprocess, classes.class_rows, device, autocast)
    threshold = best_f1_threshold(results)
    write_prediction_grid(results, classes, threshold, output_dir / "val_predictions.jpg")
    matrix = confusion_matrix(results, classes.class_rows, threshold)
    write_confusion_plot(matrix, [classes.name_of(row) for row in classes.class_rows], threshold,
                         output_dir / "confusion_matrix.png")
    logger.info("wrote %s and %s (score threshold %.2f: best F1 on the validation images)",
                output_dir / "val_predictions.jpg", output_dir / "confusion_matrix.png", threshold)
    return threshold


def _uint8(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):  # [3, H, W] float in [0, 1]
        return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.asarray(image.convert("RGB"))
