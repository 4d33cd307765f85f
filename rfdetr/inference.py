"""Pieces of ``predict()`` shared by the PyTorch wrappers and the ONNX Runtime predictor."""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np
import torch

from rfdetr.classes import ClassTable
from rfdetr.datasets.inputs import as_image_list, load_pixels
from rfdetr.datasets.preprocess import resize_normalize


def check_threshold(threshold: Any) -> None:
    """A ``ValueError`` unless ``threshold`` is a score in [0, 1]; predict() calls it before any work."""
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a score in [0, 1], got {threshold!r}")


def prepare_batch(images: Any, resolution: int, device: torch.device | str = "cpu", antialias: bool = True):
    """User images -> (normalised ``[B, 3, R, R]`` batch, ``[B, 2]`` original (h, w), whether a list was given).

    ``antialias``: the resize's (see :func:`rfdetr.datasets.preprocess.resize_normalize`)."""
    items, is_list = as_image_list(images)
    pixels = [load_pixels(item, index) for index, item in enumerate(items)]
    sizes = torch.tensor([tuple(p.shape[-2:]) for p in pixels], device=device)
    # Pixels go to the device as they are (uint8 is 4x less to copy) and are converted there.
    batch = torch.stack([resize_normalize(p.to(device), resolution, resolution, antialias) for p in pixels])
    return batch, sizes, is_list


def to_detections(results: list[dict[str, torch.Tensor]], threshold: float, classes: ClassTable):
    """PostProcess results -> ``supervision.Detections`` per image, keeping scores above ``threshold``.

    ``class_id`` is the head row (label); ``data["class_name"]`` and ``data["category_id"]`` (the
    dataset's or COCO's id) come from ``classes``.
    """
    import supervision as sv

    detections = []
    for result in results:
        keep = result["scores"] > threshold
        labels = result["labels"][keep].cpu().numpy().astype(int)
        masks = result.get("masks")
        detections.append(sv.Detections(
            xyxy=result["boxes"][keep].float().cpu().numpy().astype(np.float32),
            mask=None if masks is None else masks[keep[:len(masks)]].cpu().numpy().astype(bool),
            confidence=result["scores"][keep].float().cpu().numpy(),
            class_id=labels,
            data={"class_name": np.array([classes.name_of(int(label)) for label in labels], dtype=str),
                  "category_id": np.array([classes.category_id_of(int(label)) for label in labels], dtype=int)},
        ))
    return detections
