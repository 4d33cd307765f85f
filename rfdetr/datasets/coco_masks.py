"""Which COCO ``segmentation`` values are usable instance masks: the one rule of the dataset loader,
``validate_setup.py``, the mask-training check and ``segm`` evaluation.

A segmentation is usable when it describes a mask of at least one pixel on its ``height x width``
image:

- polygons ``[[x0, y0, x1, y1, ...], ...]``: each a list of finite numbers of even length.
  Polygons of fewer than 3 points enclose nothing and are left out (pycocotools would read one of 4
  numbers as a box); the others, merged, must cover a pixel.
- RLE ``{"size": [height, width], "counts": ...}``, compressed (a string) or not (a list of ints):
  the size must be the image's and the counts well formed (non-negative run lengths summing to
  ``height * width``, at least one pixel set).

Anything else (no ``segmentation`` key, ``None``, ``[]``, malformed values) is no mask, and its
instance is *box-only*: mask training keeps its box (single stage trains it) but leaves it out of
the mask loss (``has_mask`` False in the target), ``segm`` evaluation ignores it, and
``validate_setup.py --stage 2`` counts it (a WARN; a FAIL only for a split without any mask).

No torch here: ``validate_setup.py`` uses this module without importing torch.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

# Why a segmentation is not a usable mask (the linter groups annotations by these).
NO_SEGMENTATION = "no segmentation"
MALFORMED_POLYGONS = "polygons with an odd coordinate count or values that are not finite numbers"
NO_PIXELS = "masks that cover no pixel (polygons of fewer than 3 points or without area, or an empty RLE)"
RLE_WITHOUT_SIZE = "RLE without a [height, width] size"
RLE_SIZE_MISMATCH = "RLE size differs from its image's [height, width]"
MALFORMED_RLE = "RLE counts that are malformed or do not sum to height * width"
UNKNOWN_FORMAT = "segmentations that are neither polygons nor RLE"
NO_IMAGE_SIZE = "annotations whose image has no height/width in the JSON"

Rle = dict[str, Any]


def mask_rle(segmentation: Any, height: int, width: int) -> tuple[Rle | None, str | None]:
    """``(RLE of the mask, None)`` for a usable segmentation, ``(None, why not)`` otherwise (module docstring).

    The RLE is in pycocotools' form (``size``, compressed ``counts``), ready for ``decode`` or ``COCOeval``.
    """
    if segmentation is None or (isinstance(segmentation, (list, dict)) and not segmentation):
        return None, NO_SEGMENTATION
    if isinstance(segmentation, list):
        return _polygons_rle(segmentation, height, width)
    if isinstance(segmentation, dict):
        return _checked_rle(segmentation, height, width)
    return None, UNKNOWN_FORMAT


def count_masks(document: dict) -> Counter:
    """``{None: annotations with a usable mask, why not: annotations without}`` of a COCO document,
    each judged on the ``height x width`` its image record gives."""
    sizes = {image.get("id"): (image.get("height"), image.get("width")) for image in document.get("images", [])}
    counts: Counter = Counter()
    for annotation in document.get("annotations", []):
        height, width = sizes.get(annotation.get("image_id"), (None, None))
        if isinstance(height, int) and isinstance(width, int):
            counts[mask_rle(annotation.get("segmentation"), height, width)[1]] += 1
        else:
            counts[NO_IMAGE_SIZE] += 1
    return counts


def decode_segmentation(segmentation: Any, height: int, width: int, where: str = "annotation") -> np.ndarray:
    """The ``[height, width]`` uint8 0/1 mask of a usable segmentation; ``ValueError`` naming ``where``
    and the problem for any other (see :func:`mask_rle`)."""
    rle, problem = mask_rle(segmentation, height, width)
    if rle is None:
        raise ValueError(f"{where}: {problem}")
    return decode_rle(rle)


def decode_rle(rle: Rle) -> np.ndarray:
    """A pycocotools RLE -> ``[height, width]`` uint8 0/1 mask."""
    return (coco_mask.decode(rle) > 0).astype(np.uint8)


def box_rle(bbox: list[float], height: int, width: int) -> Rle:
    """The RLE of an ``[x, y, w, h]`` box (the region ``segm`` evaluation ignores for a box-only instance)."""
    return coco_mask.frPyObjects(np.array([bbox], dtype=np.float64), height, width)[0]


def compressed_counts(text: str) -> list[int] | None:
    """The run lengths a compressed COCO RLE string holds; ``None`` when it is not one.

    Each count is a little-endian series of 5-bit groups, one character (group + 48) each: bit 0x20
    says another group follows, bit 0x10 of the last group is the sign. From the third count on,
    what is stored is the difference to the count two places before.
    """
    counts, position = [], 0
    while position < len(text):
        value, shift, group = 0, 0, 0x20
        while group & 0x20:
            if position == len(text):
                return None  # the string ends inside a count
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                return None
            value |= (group & 0x1F) << shift
            shift += 5
            position += 1
        if group & 0x10:
            value -= 1 << shift
        counts.append(value + counts[-2] if len(counts) > 2 else value)
    return counts


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _polygons_rle(polygons: list, height: int, width: int) -> tuple[Rle | None, str | None]:
    if not all(isinstance(p, (list, tuple)) and len(p) % 2 == 0 and all(_is_number(v) for v in p) for p in polygons):
        return None, MALFORMED_POLYGONS
    kept = [[float(v) for v in p] for p in polygons if len(p) >= 6]
    if not kept:
        return None, NO_PIXELS
    rle = coco_mask.merge(coco_mask.frPyObjects(kept, height, width))
    return (rle, None) if coco_mask.area(rle) > 0 else (None, NO_PIXELS)


def _checked_rle(segmentation: dict, height: int, width: int) -> tuple[Rle | None, str | None]:
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        return None, RLE_WITHOUT_SIZE
    if list(size) != [height, width]:
        return None, RLE_SIZE_MISMATCH
    if isinstance(counts, str):
        runs = compressed_counts(counts)
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        runs = counts
    else:
        runs = None
    if runs is None or any(run < 0 for run in runs) or sum(runs) != height * width:
        return None, MALFORMED_RLE
    if not any(runs[1::2]):  # runs alternate 0s and 1s, starting with 0s
        return None, NO_PIXELS
    if isinstance(counts, str):
        return {"size": [height, width], "counts": counts.encode("ascii")}, None
    return coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width), None
