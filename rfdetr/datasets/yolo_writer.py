"""Writing synthetic scenes as a YOLO-format dataset (the Ultralytics layout).

``<out_dir>/data.yaml`` (``names`` as a list, ``train: images/train``, ``val: images/val``,
``test: images/test``), images under ``images/<split>`` and one label file per image under
``labels/<split>``. Two kinds of labels:

- ``detect``: ``class cx cy w h``, the box of the object's visible pixels (the same box the COCO
  writer gives its ``bbox``), so a COCO and a YOLO copy of one scene set train alike;
- ``segment``: ``class x1 y1 x2 y2 ...``, the polygon of the visible part: the drawn polygon of an
  unoccluded shape (exact), the traced outline of its largest visible piece otherwise (YOLO has one
  polygon per object: a piece cut off by an occluder is left out).

Values are normalised by the image width and height and printed with 10 significant digits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from skimage import measure

TASKS = ("detect", "segment")
FOLDERS = {"train": "train", "valid": "val", "test": "test"}  # scene split -> YOLO folder name


def _number(value: float) -> str:
    return f"{value:.10g}"


def box_line(class_index: int, bbox: Sequence[float], height: int, width: int) -> str:
    """``class cx cy w h`` of a COCO ``[x, y, w, h]`` pixel box."""
    x, y, w, h = bbox
    values = ((x + w / 2) / width, (y + h / 2) / height, w / width, h / height)
    return " ".join([str(class_index), *(_number(v) for v in values)])


def polygon_line(class_index: int, polygon: Sequence[float], height: int, width: int) -> str:
    """``class x1 y1 ...`` of a pixel polygon ``[x1, y1, x2, y2, ...]`` (clipped to the image)."""
    values = [min(max(v / (width if i % 2 == 0 else height), 0.0), 1.0) for i, v in enumerate(polygon)]
    return " ".join([str(class_index), *(_number(v) for v in values)])


def visible_polygon(visible_mask: np.ndarray) -> list[float]:
    """The outline of the largest piece of a ``[H, W]`` 0/1 mask as a pixel polygon ``[x1, y1, ...]``.

    The contour passes through pixel edges (pixel ``(r, c)`` covers ``[c, c + 1] x [r, r + 1]``, the
    COCO polygon convention); points are thinned to within a quarter pixel of the outline.
    """
    padded = np.pad(visible_mask.astype(np.float32), 1)
    contours = measure.find_contours(padded, 0.5)
    if not contours:
        return []
    largest = max(contours, key=lambda c: _area(c[:, 1], c[:, 0]))
    outline = measure.approximate_polygon(largest, tolerance=0.25)[:-1]  # the last point repeats the first
    # find_contours gives (row, col) at pixel centres of the padded mask: shift by -1 (padding) + 0.5.
    return [round(float(v), 2) for row, col in outline for v in (col - 0.5, row - 0.5)]


def _area(xs: np.ndarray, ys: np.ndarray) -> float:
    return abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))) / 2


def label_lines(objects: Sequence, height: int, width: int, task: str, box_of) -> list[str]:
    """The label lines of a scene's objects (``box_of(mask)``: the COCO box of a visible mask)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    lines = []
    for obj in objects:
        if task == "detect":
            lines.append(box_line(obj.class_index, box_of(obj.visible_mask), height, width))
            continue
        polygon = obj.polygon if not obj.occluded else visible_polygon(obj.visible_mask)
        if len(polygon) >= 6:
            lines.append(polygon_line(obj.class_index, polygon, height, width))
    return lines


def write_data_yaml(out_dir: Path, classes: Sequence[str], splits: Sequence[str]) -> Path:
    """``data.yaml`` naming the classes and each split's image folder."""
    lines = [f"# synthetic shapes in the YOLO layout; {len(classes)} classes", f"nc: {len(classes)}",
             "names: [" + ", ".join(repr(name) for name in classes) + "]"]
    lines += [f"{'val' if split == 'valid' else split}: images/{FOLDERS[split]}" for split in splits]
    path = out_dir / "data.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
