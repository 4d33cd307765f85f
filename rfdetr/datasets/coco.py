"""Detection/segmentation datasets from a COCO-format document: a Roboflow COCO folder or a YOLO one.

``<dataset_dir>/<split>/_annotations.coco.json`` with the images beside it (``val`` falls back to
``valid``), or a YOLO folder's split converted in memory (:mod:`rfdetr.datasets.splits` reads
either; :func:`build_dataset` goes through it). Labels come from :class:`rfdetr.classes.ClassTable`
(category ids -> contiguous labels; Roboflow's id-0 project category is not a class).

What is dropped, and how: crowd annotations (``iscrowd=1``) silently; annotations whose bbox is
malformed, NaN/inf or has a negative width/height with a logged warning; boxes empty after clamping
to the image silently. Images without annotations are kept. Unknown image or category ids, missing
files and broken JSON raise errors naming the file and the id. An unreadable or truncated image raises
``ValueError`` naming the file when the item is loaded (it is not skipped: a silent skip would change
the dataset). Images are read by :func:`rfdetr.datasets.images.read_image`, the reader of ``predict()``, so
both see the same pixels. Masks are decoded only when the dataset is built with ``masks=True``, per item.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from rfdetr.classes import ClassTable
from rfdetr.datasets.coco_layout import ANNOTATION_FILE
from rfdetr.datasets.coco_masks import decode_rle, mask_rle
from rfdetr.datasets.images import read_image
from rfdetr.datasets.splits import (
    SplitData,
    coco_split,
    dataset_classes,
    load_annotation_file,
    load_split,
    resolve_split_dir,
)
from rfdetr.datasets.transforms import Transform, eval_transforms, image_size, train_scales, train_transforms

logger = logging.getLogger(__name__)

# The split readers live in rfdetr.datasets.splits (no torch there); re-exported for existing imports.
__all__ = ["CocoDetection", "build_dataset", "dataset_classes", "load_annotation_file", "resolve_split_dir"]

_MAX_LOGGED_SKIPS = 5


# ---- annotation checks -------------------------------------------------------------------------
def _valid_bbox(bbox: Any) -> bool:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return False
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        return False
    return all(math.isfinite(v) for v in values) and values[2] >= 0 and values[3] >= 0


def _index_annotations(data: dict, path: Path, classes: ClassTable) -> tuple[dict[int, list[dict]], list[dict]]:
    """Per-image usable annotations, plus the list of every annotation kept for evaluation."""
    per_image: dict[int, list[dict]] = {int(image["id"]): [] for image in data["images"]}
    category_ids = {entry.category_id for entry in classes.entries}
    kept, skipped = [], 0
    for annotation in data["annotations"]:
        ann_id = annotation.get("id")
        try:
            image_id, category_id = int(annotation["image_id"]), int(annotation["category_id"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: annotation id {ann_id} has no valid image_id/category_id ({error})") from error
        if image_id not in per_image:
            raise ValueError(f"{path}: annotation id {ann_id} refers to unknown image_id {image_id}")
        if category_id not in category_ids:
            raise ValueError(f"{path}: annotation id {ann_id} (image_id {image_id}) has category_id {category_id}, "
                             f"which is not a class ({classes.describe()})")
        if not _valid_bbox(annotation.get("bbox")):
            skipped += 1
            if skipped <= _MAX_LOGGED_SKIPS:
                logger.warning("%s: skipping annotation id %s (image_id %s): invalid bbox %r",
                               path, ann_id, image_id, annotation.get("bbox"))
            continue
        kept.append(annotation)
        if not annotation.get("iscrowd", 0):
            per_image[image_id].append(annotation)
    if skipped > _MAX_LOGGED_SKIPS:
        logger.warning("%s: skipped %d annotations with invalid bboxes in total", path, skipped)
    return per_image, kept


def _index_images(data: dict, path: Path, image_dir: Path) -> list[dict]:
    images, seen = [], set()
    for image in data["images"]:
        if "id" not in image or not image.get("file_name"):
            raise ValueError(f"{path}: image entry {image!r} needs 'id' and 'file_name'")
        image_id = int(image["id"])
        if image_id in seen:
            raise ValueError(f"{path}: duplicate image id {image_id}")
        seen.add(image_id)
        images.append(image)
    missing = [image for image in images if not (image_dir / image["file_name"]).is_file()]
    if missing:
        shown = ", ".join(f"{image['file_name']} (id {image['id']})" for image in missing[:5])
        raise FileNotFoundError(f"{path}: {len(missing)} image files are missing from {image_dir}: {shown}")
    return images


# ---- the dataset -------------------------------------------------------------------------------
class CocoDetection(Dataset):
    """Images and targets of one COCO split.

    Items are ``(image, target)``: the image as given by ``transforms`` (without them a PIL RGB
    image, or a ``[3, H, W]`` float tensor for 16-bit and float files: :meth:`load_image`) and a
    target with ``boxes`` ``[N, 4]`` float32 (x0, y0, x1, y1 pixels, or what the transforms make of
    them), ``labels`` ``[N]`` int64 (ClassTable labels), ``image_id`` int64, ``orig_size`` / ``size``
    ``[2]`` int64 (h, w), ``area`` ``[N]`` float32, ``iscrowd`` ``[N]`` int64 and, only when
    ``masks=True``, ``masks`` ``[N, H, W]`` uint8 with ``has_mask`` ``[N]`` bool (False for a
    box-only instance, whose mask is empty: the rule of :mod:`rfdetr.datasets.coco_masks`).
    """

    def __init__(self, split: str | Path | SplitData, transforms: Transform | None = None, *, masks: bool = False,
                 annotation_file: str = ANNOTATION_FILE):
        source = split if isinstance(split, SplitData) else coco_split(split, annotation_file)
        self.split_dir = source.image_dir  # image file names are relative to it
        self.annotation_path = source.path
        self.transforms = transforms
        self.masks = masks
        self._data = source.document
        try:
            self.classes = ClassTable.from_categories(self._data["categories"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{self.annotation_path}: bad categories: {error}") from error
        self._labels = {entry.category_id: entry.label for entry in self.classes.entries}
        self._images = _index_images(self._data, self.annotation_path, self.split_dir)
        self._annotations, self._kept_annotations = _index_annotations(self._data, self.annotation_path,
                                                                       self.classes)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        image = self.load_image(index)
        target = self.load_target(index, *image_size(image))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    @property
    def image_ids(self) -> list[int]:
        return [int(image["id"]) for image in self._images]

    def load_image(self, index: int) -> Image.Image | torch.Tensor:
        """The image read by :func:`rfdetr.datasets.images.read_image` (the pixels predict() reads from the file).

        8-bit sources as a PIL RGB image; 16-bit and float ones as a ``[3, H, W]`` float32 tensor in
        [0, 1] (the transforms take either). Unreadable or truncated files raise ``ValueError`` naming
        the file.
        """
        info = self._images[index]
        path = self.split_dir / info["file_name"]
        try:
            pixels = read_image(path)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"image file {path} (image id {info['id']}) does not exist") from error
        except ValueError as error:
            raise ValueError(f"cannot read image file {path} (image id {info['id']} in "
                             f"{self.annotation_path.name}): {error.__cause__ or error}") from error
        if pixels.dtype == np.uint8:
            return Image.fromarray(pixels)
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def load_target(self, index: int, width: int, height: int) -> dict[str, torch.Tensor]:
        """Target of image ``index`` whose decoded size is ``width x height`` (see the class docstring)."""
        image_id = int(self._images[index]["id"])
        annotations = self._annotations[image_id]
        boxes = torch.tensor([[float(v) for v in a["bbox"]] for a in annotations], dtype=torch.float32)
        boxes = boxes.reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        kept = [a for a, k in zip(annotations, keep.tolist()) if k]
        boxes = boxes[keep]
        areas = [float(a.get("area", 0.0) or 0.0) for a in kept]
        size = torch.tensor([height, width], dtype=torch.int64)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self._labels[int(a["category_id"])] for a in kept], dtype=torch.int64),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "orig_size": size,
            "size": size.clone(),
            "area": torch.tensor(areas, dtype=torch.float32),
            "iscrowd": torch.zeros(len(kept), dtype=torch.int64),
        }
        if self.masks:
            target["masks"], target["has_mask"] = self._decode_masks(kept, height, width)
        return target

    @staticmethod
    def _decode_masks(annotations: list[dict], height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``masks [N, H, W]`` uint8 and ``has_mask [N]`` bool; a box-only instance (no usable
        segmentation, :mod:`rfdetr.datasets.coco_masks`) gets an empty mask and ``has_mask`` False."""
        rles = [mask_rle(a.get("segmentation"), height, width)[0] for a in annotations]
        masks = [decode_rle(rle) if rle is not None else np.zeros((height, width), np.uint8) for rle in rles]
        has_mask = torch.tensor([rle is not None for rle in rles], dtype=torch.bool)
        if not masks:
            return torch.zeros((0, height, width), dtype=torch.uint8), has_mask
        return torch.from_numpy(np.stack(masks)), has_mask

    @cached_property
    def coco(self):
        """A pycocotools ``COCO`` of this split for evaluation (built on first use, without re-reading).

        Holds every annotation with a valid bbox, crowd ones included (COCOeval ignores them), with
        ``iscrowd``/``area`` defaults filled in. If an annotation id is 0 (Roboflow exports start at
        0), ids are renumbered 1..N: COCOeval treats a match with ground-truth id 0 as no match.
        """
        from pycocotools.coco import COCO

        annotations = [dict(a) for a in self._kept_annotations]
        ids = [a.get("id") for a in annotations]
        renumber = any(not isinstance(i, int) or i < 1 for i in ids) or len(set(ids)) != len(ids)
        for number, annotation in enumerate(annotations, start=1):
            annotation.setdefault("iscrowd", 0)
            if "area" not in annotation:
                annotation["area"] = float(annotation["bbox"][2]) * float(annotation["bbox"][3])
            if renumber:
                annotation["id"] = number
        coco = COCO()
        coco.dataset = {key: value for key, value in self._data.items() if key != "annotations"}
        coco.dataset["annotations"] = annotations
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco


# ---- builder -----------------------------------------------------------------------------------
def build_dataset(dataset_dir: str | Path, split: str, *, resolution: int, train: bool | None = None,
                  multi_scale: bool = False, expanded_scales: bool = False,
                  do_random_resize_via_padding: bool = False, patch_size: int | None = None,
                  num_windows: int | None = None, native_resolution: int | None = None, masks: bool = False,
                  generator: torch.Generator | None = None) -> CocoDetection:
    """The ``split`` of ``dataset_dir`` with its transforms (train: flip, resize/crop, square resize).

    ``train`` (default: ``split == "train"``) selects the augmenting pipeline; its square sizes
    come from :func:`train_scales` (``patch_size``/``num_windows`` are needed for multi-scale;
    ``native_resolution`` scales the set, see :func:`multi_scale_sizes`).
    Otherwise images are resized to ``resolution x resolution``.
    """
    train = split == "train" if train is None else train
    if train:
        if multi_scale and (patch_size is None or num_windows is None):
            raise ValueError("multi_scale training needs patch_size and num_windows")
        scales = train_scales(resolution, patch_size or 1, num_windows or 1, multi_scale=multi_scale,
                              expanded_scales=expanded_scales,
                              do_random_resize_via_padding=do_random_resize_via_padding,
                              native_resolution=native_resolution)
        transforms = train_transforms(scales, generator)
    else:
        transforms = eval_transforms(resolution)
    dataset = CocoDetection(load_split(dataset_dir, split), transforms, masks=masks)
    logger.info("%s split from %s: %d images, %d classes", split, dataset.split_dir, len(dataset),
                len(dataset.classes.entries))
    return dataset

