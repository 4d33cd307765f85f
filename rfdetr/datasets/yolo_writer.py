"""Writing synthetic scenes as a YOLO-format dataset (the Ultralytics layout).

``<out_dir>/data.yaml`` (``names`` as a list, ``train: images/train``, ``val: images/val``,
``test: images/test``), images under ``images/<split>`` and one label file per image under
``labels/<split>``. Two kinds of labels:

- ``detect``: ``class cx cy w h``, the box of the object's visible pixels (the same box the COCO
  writer gives its ``bbox``), so a COCO and a YOLO copy of one scene set train alike;
- ``segment``: ``class x1 y1 x2 y2 ...``, the polygon of the visible part: the drawn polygon of an
  unoccluded shape (exact), the traced outline of the visible pixels otherwise (:func:`visible_polygon`:
  YOLO has one polygon per object, so pieces and holes are bridged into it).

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
    """The outline of a ``[H, W]`` 0/1 mask as one pixel polygon ``[x1, y1, ...]``.

    The outline passes through pixel edges (pixel ``(r, c)`` covers ``[c, c + 1] x [r, r + 1]``, the
    COCO polygon convention), thinned to within a quarter pixel. A mask in several pieces, or with
    holes, becomes one polygon: each further outline (piece or hole, largest first) joins by a
    zero-width bridge from its nearest point. Polygons are filled by the even-odd rule (pycocotools),
    so a bridged hole stays a hole.
    """
    padded = np.pad(visible_mask.astype(np.float32), 1)
    contours = [measure.approximate_polygon(c, tolerance=0.25)[:-1] for c in measure.find_contours(padded, 0.5)]
    # (row, col) at pixel centres of the padded mask -> (x, y) on pixel edges: shift by -1 (padding) + 0.5.
    pieces = [np.stack([c[:, 1] - 0.5, c[:, 0] - 0.5], axis=1) for c in contours if len(c) >= 3]
    if not pieces:
        return []
    areas = [_signed_area(p) for p in pieces]
    pieces = [p for p, a in sorted(zip(pieces, areas), key=lambda pa: -abs(pa[1])) if abs(a) >= 1]
    polygon = pieces[0]
    for piece in pieces[1:]:
        distances = np.linalg.norm(polygon[:, None, :] - piece[None, :, :], axis=2)
        i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
        around = np.roll(piece, -j, axis=0)
        polygon = np.concatenate([polygon[:i + 1], around, around[:1], polygon[i:]])
    return [round(float(v), 2) for v in polygon.reshape(-1)]


def _signed_area(points: np.ndarray) -> float:
    xs, ys = points[:, 0], points[:, 1]
    return float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2


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
