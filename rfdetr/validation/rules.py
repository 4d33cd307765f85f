"""The dataset rules ``validate_setup.py`` applies to a COCO-format document, whichever format it came from.

A COCO annotation file is checked as it is; a YOLO split is first converted to the same document
(:mod:`rfdetr.datasets.yolo`), so a box outside its image, an unknown category, an image that does
not decode or a split without masks in stage 2 are judged by one rule for both. Results are
:class:`CheckResult` lines grouped per file by :class:`Findings`. No torch here.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Iterator, Mapping

from rfdetr.classes import ClassTable
from rfdetr.datasets.coco_masks import NO_SEGMENTATION, mask_rle
from rfdetr.datasets.images import DECODE_ERRORS, read_image, upright_size

# Exporters round box corners, so a box may reach this many pixels past its image without comment.
BOX_TOLERANCE = 1.0
MAX_LISTED = 5


class Level(str, Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    level: Level
    section: str  # "env", "dataset" or a split name
    message: str  # names the file (relative to the dataset folder) for dataset checks

    def __str__(self) -> str:
        return f"[{self.level.value}] {self.message}"


@dataclass(frozen=True)
class SplitSummary:
    split: str
    images: int
    annotations: int
    classes: int
    segmented: int  # annotations with a usable polygon or RLE mask (rfdetr.datasets.coco_masks)


class Findings:
    """Problems of one file grouped by check and description, each with its offending items."""

    def __init__(self, section: str, file: str):
        self.section, self.file = section, file
        self._problems: dict[tuple[str, Level, str], list[str]] = {}

    def add(self, check: str, level: Level, problem: str, item: object) -> None:
        self._problems.setdefault((check, level, problem), []).append(str(item))

    def results(self, passes: Mapping[str, str]) -> Iterator[CheckResult]:
        """One line per problem; a PASS line (from ``passes``) for each check that found none."""
        for check, pass_message in passes.items():
            problems = [(key, items) for key, items in self._problems.items() if key[0] == check]
            if not problems:
                yield CheckResult(Level.PASS, self.section, f"{self.file}: {pass_message}")
            for (_, level, problem), items in problems:
                more = f", ... (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
                shown = ", ".join(items[:MAX_LISTED]) + more
                yield CheckResult(level, self.section, f"{self.file}: {problem} ({len(items)}): {shown}")


def check_document(data: dict, folder: Path, found: Findings, *, stage: int, decode: bool, train: bool,
                   name: Callable[[dict], str] | None = None) -> tuple[dict[int, dict], dict[int, str], set[int], int]:
    """Check a COCO document whose image ``file_name`` values are relative to ``folder``.

    ``data`` has ``images``, ``annotations`` and ``categories`` lists; ``name`` gives an annotation's
    name in messages (default ``annotation <id>``); ``train`` adds the classes-without-annotations
    WARN. Returns (usable images by id, {category id: name}, class ids, annotations with a mask).
    """
    images = _check_image_records(data["images"], found)
    categories, class_ids = _check_categories(data["categories"], found)
    _check_image_files(folder, images, decode, found)
    class_counts, segmented = _check_annotations(data["annotations"], images, categories, class_ids, stage, found,
                                                 name or (lambda ann: f"annotation {ann['id']}"))
    if train:
        for cid in sorted(cid for cid in class_ids if cid not in class_counts):
            found.add("annotations", Level.WARN, "classes without a training annotation", f"{categories[cid]} ({cid})")
    if not images:
        found.add("structure", Level.FAIL, "no images", "images list is empty")
    return images, categories, class_ids, segmented


def document_passes(structure: str, data: dict, images: dict, class_ids: set[int], stage: int,
                    decode: bool) -> dict[str, str]:
    """The PASS line of each check of :func:`check_document` (``structure``: what the file's structure passed)."""
    passes = {"structure": structure,
              "categories": f"{len(class_ids)} classes",
              "images": f"{len(images)} image files exist{', decode' if decode else ''} and match their size",
              "annotations": f"{len(data['annotations'])} annotations: known images and categories, boxes inside",
              "segmentation": "every segmentation given is a usable mask"}
    if stage == 2:
        passes["stage2"] = "every non-crowd annotation has a segmentation"
    return passes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_image_records(records: list, found: Findings) -> dict[int, dict]:
    images: dict[int, dict] = {}
    for index, image in enumerate(records):
        if not isinstance(image, dict) or not _is_int(image.get("id")) or not isinstance(image.get("file_name"), str):
            found.add("structure", Level.FAIL, "image records without an integer id or a file_name", f"#{index}")
        elif image["id"] in images:
            found.add("structure", Level.FAIL, "duplicate image ids", f"image {image['id']}")
        elif not all(_is_int(image.get(key)) and image[key] > 0 for key in ("width", "height")):
            found.add("structure", Level.FAIL, "images without a positive width/height", f"image {image['id']}")
        else:
            images[image["id"]] = image
    return images


def _check_categories(records: list, found: Findings) -> tuple[dict[int, str], set[int]]:
    """({category id: name} of every category, ids that are classes (Roboflow project entry excluded))."""
    valid = [c for c in records if isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)]
    for index in (i for i, c in enumerate(records) if not any(c is v for v in valid)):
        found.add("categories", Level.FAIL, "categories without an integer id or a name", f"#{index}")
    names = {c["id"]: c["name"] for c in valid}
    try:
        return names, {e.category_id for e in ClassTable.from_categories(valid).entries}
    except ValueError as error:
        found.add("categories", Level.FAIL, "unusable category list", error)
        return names, set()


def _inspect_image(path: Path, decode: bool) -> tuple[str | None, tuple[int, int] | None]:
    """(error or None, upright (width, height)): decoded by the training reader, or from the header alone."""
    try:
        if not decode:
            return None, upright_size(path)
        pixels = read_image(path)  # what training and predict() read: a file it refuses fails here
    except DECODE_ERRORS as error:
        cause = error.__cause__ or error  # read_image names the file; the line names it already
        return f"{type(cause).__name__}: {cause}", None
    return None, (pixels.shape[1], pixels.shape[0])


def _check_image_files(folder: Path, images: dict[int, dict], decode: bool, found: Findings) -> None:
    present = {iid: image for iid, image in images.items() if (folder / image["file_name"]).is_file()}
    for iid in images.keys() - present.keys():
        found.add("images", Level.FAIL, "image files missing", f"image {iid} {images[iid]['file_name']}")
    paths = [folder / image["file_name"] for image in present.values()]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        outcomes = list(pool.map(lambda path: _inspect_image(path, decode), paths))
    for (iid, image), (error, size) in zip(present.items(), outcomes):
        if error is not None:
            found.add("images", Level.FAIL, "image files that do not decode (truncated or corrupt)",
                      f"image {iid} {image['file_name']} [{error}]")
        elif size != (image["width"], image["height"]):
            found.add("images", Level.WARN, "image sizes differ from the JSON width/height", f"image {iid} "
                      f"{image['file_name']} is {size[0]}x{size[1]}, JSON says {image['width']}x{image['height']}")


def _check_annotations(records: list, images: dict[int, dict], categories: dict[int, str], class_ids: set[int],
                       stage: int, found: Findings, name: Callable[[dict], str]) -> tuple[dict[int, int], int]:
    """Returns ({class id: annotation count}, number of annotations with a usable mask).

    Segmentations follow :mod:`rfdetr.datasets.coco_masks`, the loader's rule: one that is present but no
    usable mask is a WARN; in stage 2 a missing one is a WARN too, and a split without any mask a FAIL.
    """
    class_counts: dict[int, int] = {}  # class id -> annotations
    seen_ids, segmented = set(), 0
    not_crowd = sum(isinstance(a, dict) and a.get("iscrowd", 0) != 1 for a in records)
    for index, ann in enumerate(records):
        if not isinstance(ann, dict) or any(key not in ann for key in ("id", "image_id", "category_id", "bbox")):
            found.add("structure", Level.FAIL, "annotations without id, image_id, category_id or bbox", f"#{index}")
            continue
        aid, label = ann["id"], name(ann)
        if not isinstance(aid, (int, str)) or aid in seen_ids:
            found.add("structure", Level.FAIL, "duplicate or non-scalar annotation ids", label)
        else:
            seen_ids.add(aid)
        image = images.get(ann["image_id"]) if _is_int(ann["image_id"]) else None
        if image is None:
            found.add("annotations", Level.FAIL, "unknown image_id", f"{label} (image_id {ann['image_id']})")
        category_id = ann["category_id"] if _is_int(ann["category_id"]) else None
        if category_id in class_ids:
            class_counts[category_id] = class_counts.get(category_id, 0) + 1
        else:
            problem = "category is the Roboflow project entry" if category_id in categories else "unknown category_id"
            found.add("annotations", Level.FAIL, problem, f"{label} (category_id {ann['category_id']})")
        problem = _bbox_problem(ann["bbox"], image)
        if problem is not None:
            found.add("annotations", problem[0], problem[1], label)
        if image is not None:  # the mask rule needs the image size
            _, problem = mask_rle(ann.get("segmentation"), image["height"], image["width"])
            segmented += problem is None
            if problem not in (None, NO_SEGMENTATION):
                found.add("segmentation", Level.WARN, f"{problem}: mask training keeps their boxes only",
                          label)
            elif problem == NO_SEGMENTATION and stage == 2 and ann.get("iscrowd", 0) != 1:
                found.add("stage2", Level.WARN, f"annotations without a segmentation (of {not_crowd} non-crowd): "
                          "stage 2 keeps their boxes only and segm evaluation ignores them", label)
    if stage == 2 and segmented == 0:
        found.add("stage2", Level.FAIL, "no usable mask: stage 2 needs polygons or RLE masks",
                  f"0 of {len(records)} annotations")
    return class_counts, segmented


def _bbox_problem(bbox: object, image: dict | None) -> tuple[Level, str] | None:
    """A bbox ``[x, y, w, h]`` in pixels. Partly outside the image -> WARN (clamped), wholly outside -> FAIL."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return Level.FAIL, "bbox is not a list of 4 numbers"
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return Level.FAIL, "bbox has NaN or infinite values"
    if w < 0 or h < 0:
        return Level.FAIL, "bbox has a negative width or height"
    if w == 0 or h == 0:
        return Level.WARN, "bbox has zero width or height (the loader drops it)"
    if image is None:
        return None
    width, height = image["width"], image["height"]
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return Level.FAIL, "bbox lies entirely outside its image"
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        return Level.WARN, f"bbox reaches more than {BOX_TOLERANCE:g} px past its image (the loader clamps it)"
    return None
