"""A dataset split as a COCO-format document, whichever format the folder is in: the one way in.

- COCO (Roboflow layout): ``<dataset_dir>/<split>/_annotations.coco.json`` with the images beside
  it (:mod:`rfdetr.datasets.coco_layout`).
- YOLO: a ``data.yaml`` / ``data.yml`` (:mod:`rfdetr.datasets.yolo_layout`); the split's labels
  are converted in memory (:mod:`rfdetr.datasets.yolo`), nothing is written into the folder.

A folder whose train split has a COCO annotation file is read as COCO; otherwise one with a
``data.yaml`` is read as YOLO. The dataset loader, the class table of a run
(:func:`dataset_classes`), the mask check of the mask stages and COCO evaluation all read splits
here, so both formats give the same class tables, checkpoints, ``results.json`` and evaluation.
No torch here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from rfdetr.classes import ClassTable
from rfdetr.datasets.coco_layout import ANNOTATION_FILE, find_split_dir
from rfdetr.datasets.yolo import categories, is_yolo_dataset, yolo_document, yolo_layout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitData:
    """One split: its COCO document, the folder its image ``file_name`` values are relative to, and
    the file it was read from (the annotation JSON, or the ``data.yaml``) for messages."""

    document: dict
    image_dir: Path
    path: Path


def dataset_format(dataset_dir: str | Path) -> str:
    """``"coco"`` or ``"yolo"`` (the module docstring's rule); a missing folder raises ``FileNotFoundError``."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset folder {dataset_dir} does not exist")
    train = find_split_dir(dataset_dir, "train")
    if (train is None or not (train / ANNOTATION_FILE).is_file()) and is_yolo_dataset(dataset_dir):
        return "yolo"
    return "coco"


def resolve_split_dir(dataset_dir: str | Path, split: str) -> Path:
    """``dataset_dir/split`` of a COCO folder (``valid`` and ``val`` are one split: :mod:`.coco_layout`)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset folder {dataset_dir} does not exist")
    split_dir = find_split_dir(dataset_dir, split)
    if split_dir is None:
        found = sorted(p.name for p in dataset_dir.iterdir() if p.is_dir())
        raise FileNotFoundError(f"split folder {dataset_dir / split} does not exist (found folders: {found}); "
                                f"expected <dataset_dir>/{{train,valid,test}}/{ANNOTATION_FILE}, or a YOLO "
                                "dataset's data.yaml")
    return split_dir


def load_annotation_file(path: str | Path) -> dict:
    """Read and shape-check a COCO annotation JSON; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        with path.open("r", encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"annotation file {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"annotation file {path}: expected a JSON object, got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"annotation file {path}: missing or malformed '{key}' list")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise ValueError(f"annotation file {path}: 'annotations' must be a list")
    return data


def coco_split(split_dir: str | Path, annotation_file: str = ANNOTATION_FILE) -> SplitData:
    """The split of a COCO split folder."""
    path = Path(split_dir) / annotation_file
    return SplitData(load_annotation_file(path), Path(split_dir), path)


def load_split(dataset_dir: str | Path, split: str) -> SplitData:
    """``split`` of ``dataset_dir`` in either format; a missing split raises ``FileNotFoundError``, bad
    YOLO labels :class:`~rfdetr.datasets.yolo_layout.YoloFormatError` (a ``ValueError``) naming file and line."""
    if dataset_format(dataset_dir) == "yolo":
        document, root, yaml_path = yolo_document(dataset_dir, split)
        return SplitData(document, root, yaml_path)
    return coco_split(resolve_split_dir(dataset_dir, split))


def has_split(dataset_dir: str | Path, split: str) -> bool:
    """Whether ``dataset_dir`` has ``split`` (its folder, or its key in the ``data.yaml``)."""
    if dataset_format(dataset_dir) == "yolo":
        return yolo_layout(dataset_dir).split_folders(split) is not None
    return find_split_dir(dataset_dir, split) is not None


def dataset_classes(dataset_dir: str | Path, split: str = "train") -> ClassTable:
    """The class table of a dataset: the categories of a COCO split's annotation file (no images
    touched), or a YOLO dataset's ``names`` (category id = class index)."""
    if dataset_format(dataset_dir) == "yolo":
        return ClassTable.from_categories(categories(yolo_layout(dataset_dir)))
    path = resolve_split_dir(dataset_dir, split) / ANNOTATION_FILE
    return ClassTable.from_categories(load_annotation_file(path)["categories"])
