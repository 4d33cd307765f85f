"""A YOLO-format split read into a COCO-format document in memory (nothing is written to the folder).

Label files hold one object a line, values separated by spaces: ``class cx cy w h`` (a box:
centre and size) or ``class x1 y1 x2 y2 x3 y3 ...`` (a polygon of at least 3 points), every value
after the class normalised to [0, 1] by the image's width and height. As Ultralytics reads them, a
label file with any polygon line (more than 4 values) is a polygon file: there every line is a
polygon, and a line of 4 values is a polygon of 2 points (in a box file it is a box). A missing or
empty label file means an image without objects. The rules, each a :class:`LabelProblem` naming the file and line:

- FAIL: a class index that is not an integer or not in ``names``; values that are not numbers or
  lie outside [0, 1]; an odd number of coordinates; a polygon of fewer than 3 points (it encloses
  nothing, and YOLO has no separate box to keep); a label file without its image; a label file
  that cannot be read; an image whose header cannot be read.
- WARN: an image without a label file (it trains as an image without objects).

The document (:func:`yolo_document`) is what a COCO export of the same data holds: images with
their upright width and height (:func:`rfdetr.datasets.images.upright_size`, the size training decodes),
``file_name`` relative to the dataset's root, annotations in pixels (``bbox`` ``[x, y, w, h]``;
polygons as ``segmentation``, their box as ``bbox``) and categories with id = YOLO class index and
the name from ``names`` (class 0 is a class like any other). The COCO rules (a box outside its
image, masks, categories) then apply to it unchanged. Each annotation and image carries
``"source"``: the label file and line (or image file) it came from, relative to the dataset root.
No torch here: ``validate_setup.py`` uses this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rfdetr.datasets.images import DECODE_ERRORS, upright_size
from rfdetr.datasets.yolo_layout import (
    YoloFormatError,
    YoloLayout,
    find_yaml,
    label_folder,
    label_path,
    list_images,
    read_layout,
)

FAIL, WARN = "FAIL", "WARN"
# Exporters print rounded values: this much past [0, 1] is still inside.
VALUE_TOLERANCE = 1e-6
MAX_SHOWN = 5

# Problems (the linter groups lines by these).
BAD_CLASS = "class index is not an integer"
UNKNOWN_CLASS = "class index outside names"
NOT_NUMBERS = "values that are not finite numbers"
OUTSIDE_UNIT = "values outside [0, 1] (YOLO coordinates are normalised by the image size)"
ODD_COORDINATES = "an odd number of coordinates"
SHORT_POLYGON = "polygons of fewer than 3 points"
NO_IMAGE = "label files without an image"
UNREADABLE_LABELS = "label files that cannot be read"
UNREADABLE_IMAGE = "image files whose header cannot be read"
NO_LABELS = "images without a label file (trained as images without objects)"
NO_FOLDER = "image folders that do not exist"


@dataclass(frozen=True)
class LabelProblem:
    level: str  # FAIL or WARN
    problem: str  # one of the constants above
    where: str  # "labels/train/a.txt:3" (file and line), or a file


@dataclass(frozen=True)
class YoloSplit:
    document: dict  # COCO format, see the module docstring
    root: Path  # image file names are relative to it
    label_folders: list[Path]
    problems: list[LabelProblem]


def is_yolo_dataset(dataset_dir: str | Path) -> bool:
    """Whether ``dataset_dir`` has a ``data.yaml`` / ``data.yml``."""
    return find_yaml(dataset_dir) is not None


def yolo_layout(dataset_dir: str | Path) -> YoloLayout:
    yaml_path = find_yaml(dataset_dir)
    if yaml_path is None:
        raise FileNotFoundError(f"{dataset_dir} has no data.yaml or data.yml")
    return read_layout(yaml_path)


def categories(layout: YoloLayout) -> list[dict]:
    """COCO categories: id = YOLO class index, name from ``names``."""
    return [{"id": index, "name": name, "supercategory": "object"} for index, name in layout.names.items()]


def read_split(layout: YoloLayout, split: str) -> YoloSplit:
    """The COCO document of ``split`` and every :class:`LabelProblem` found; errors only for a missing split."""
    folders = layout.split_folders(split)
    if folders is None:
        raise FileNotFoundError(f"{layout.yaml_path} has no '{split}' split (keys: {sorted(layout.splits)})")
    root = layout.root
    problems: list[LabelProblem] = []
    images: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            images += list_images(folder)
        else:
            problems.append(LabelProblem(FAIL, NO_FOLDER, f"{layout.split_key(split)}: {folder}"))
    labels = {label_path(image): image for image in images}
    files = {image: _read_lines(label_path(image), root, problems) for image in images}
    document = {"images": [], "annotations": [], "categories": categories(layout)}
    for image_id, image in enumerate(images):
        lines = files[image]
        if lines is None:
            problems.append(LabelProblem(WARN, NO_LABELS, _relative(image, root)))
        try:
            width, height = upright_size(image)
        except DECODE_ERRORS as error:
            problems.append(LabelProblem(FAIL, UNREADABLE_IMAGE, f"{_relative(image, root)} [{error}]"))
            continue
        document["images"].append({"id": image_id, "file_name": _relative(image, root), "width": width,
                                   "height": height, "source": _relative(image, root)})
        segmentation = any(len(tokens) > 5 for _, tokens in lines or [])  # a polygon file (the module docstring)
        for number, tokens in lines or []:
            where = f"{_relative(label_path(image), root)}:{number}"
            annotation = _annotation(tokens, width, height, layout.names, segmentation, where, problems)
            if annotation is not None:
                annotation.update(id=len(document["annotations"]) + 1, image_id=image_id, source=where)
                document["annotations"].append(annotation)
    label_folders = sorted({label_folder(folder) for folder in folders})
    for folder in label_folders:
        for orphan in sorted(p for p in folder.rglob("*.txt") if p not in labels) if folder.is_dir() else []:
            problems.append(LabelProblem(FAIL, NO_IMAGE, _relative(orphan, root)))
    return YoloSplit(document, root, label_folders, problems)


def yolo_document(dataset_dir: str | Path, split: str) -> tuple[dict, Path, Path]:
    """``(COCO document, image root, data.yaml)`` of ``split`` for training; a FAIL problem raises
    :class:`YoloFormatError` naming the files and lines (``validate_setup.py`` lists them all)."""
    layout = yolo_layout(dataset_dir)
    found = read_split(layout, split)
    failures = [p for p in found.problems if p.level == FAIL]
    if failures:
        kinds = {}
        for problem in failures:
            kinds.setdefault(problem.problem, []).append(problem.where)
        shown = "; ".join(f"{kind}: {', '.join(where[:MAX_SHOWN])}" + (f" (+{len(where) - MAX_SHOWN} more)"
                          if len(where) > MAX_SHOWN else "") for kind, where in kinds.items())
        raise YoloFormatError(f"{layout.root}: the {split} split of {layout.yaml_path.name} has bad labels: {shown} "
                              f"(check with: python validate_setup.py --dataset_dir {dataset_dir})")
    return found.document, found.root, layout.yaml_path


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _read_lines(path: Path, root: Path, problems: list[LabelProblem]) -> list[tuple[int, list[str]]] | None:
    """``[(line number, tokens)]`` of the non-blank lines; ``None`` when there is no label file."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        problems.append(LabelProblem(FAIL, UNREADABLE_LABELS, f"{_relative(path, root)} [{error}]"))
        return []
    return [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _annotation(tokens: list[str], width: int, height: int, names: dict[int, str], segmentation: bool,
                where: str, problems: list[LabelProblem]) -> dict | None:
    """The COCO annotation of one label line (without ids), or ``None`` after recording its problem."""
    try:
        class_index = int(tokens[0])
    except ValueError:
        problems.append(LabelProblem(FAIL, BAD_CLASS, f"{where} ({tokens[0]!r})"))
        return None
    if class_index not in names:
        problems.append(LabelProblem(FAIL, UNKNOWN_CLASS, f"{where} (class {class_index}; names has "
                                     f"{min(names)}..{max(names)})"))
        return None
    try:
        values = [float(v) for v in tokens[1:]]
    except ValueError:
        values = [math.nan]
    if not all(math.isfinite(v) for v in values):
        problems.append(LabelProblem(FAIL, NOT_NUMBERS, where))
        return None
    if any(v < -VALUE_TOLERANCE or v > 1 + VALUE_TOLERANCE for v in values):
        problems.append(LabelProblem(FAIL, OUTSIDE_UNIT, f"{where} ({_outside(values)})"))
        return None
    if len(values) % 2:
        problems.append(LabelProblem(FAIL, ODD_COORDINATES, f"{where} ({len(values)} values)"))
        return None
    if len(values) < 6 and (segmentation or len(values) < 4):
        problems.append(LabelProblem(FAIL, SHORT_POLYGON, f"{where} ({len(values) // 2} points)"))
        return None
    if len(values) == 4:
        cx, cy, w, h = values
        bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
        return {"category_id": class_index, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
    xs = [v * width for v in values[0::2]]
    ys = [v * height for v in values[1::2]]
    polygon = [c for xy in zip(xs, ys) for c in xy]
    area = abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2
    bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return {"category_id": class_index, "bbox": bbox, "area": area, "segmentation": [polygon], "iscrowd": 0}


def _outside(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values if v < -VALUE_TOLERANCE or v > 1 + VALUE_TOLERANCE)[:60]
