"""Pre-flight checks before training: the Python environment and a COCO dataset folder.

Each check yields :class:`CheckResult` lines: ``PASS`` (nothing found), ``WARN`` (training runs but
something is probably unintended: no test split, a box a few pixels past its image, a missing optional
package) or ``FAIL`` (training would crash or learn wrong targets: unreadable JSON, a missing or
truncated image, a NaN box, an unknown image or category id, a split without any mask in stage 2;
annotations without a usable mask are a WARN: mask training keeps their boxes). A problem names the
file and the first :data:`MAX_LISTED` offending image/annotation ids, with a count.

Layout: ``<dataset_dir>/{train,valid,test}/_annotations.coco.json``, images beside each
JSON; ``test`` is optional. Category ids go through :class:`rfdetr.classes.ClassTable` (a Roboflow
export's id-0 "none" project entry is not a class). ``validate_setup.py`` is the front end.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterator, Mapping

from rfdetr.classes import ClassTable
from rfdetr.coco_layout import ANNOTATION_FILE, find_split_dir
from rfdetr.coco_masks import NO_SEGMENTATION, mask_rle
from rfdetr.images import DECODE_ERRORS, read_image, upright_size

REQUIRED_SPLITS = ("train", "valid")
OPTIONAL_SPLITS = ("test",)
# Exporters round box corners, so a box may reach this many pixels past its image without comment.
BOX_TOLERANCE = 1.0
MAX_LISTED = 5
MIN_PYTHON = (3, 10)
MIN_TORCH = (2, 4)  # requirements.txt
# Import names of the runtime dependencies (requirements.txt); a missing optional one is a WARN.
REQUIRED_MODULES = ("torch", "torchvision", "numpy", "pydantic", "scipy", "PIL", "pycocotools", "supervision", "tqdm",
                    "tensorboard", "onnx", "onnxruntime", "skimage")
OPTIONAL_MODULES = ("wandb", "onnxscript", "cv2", "psutil")
_PIP_NAMES = {"PIL": "pillow", "skimage": "scikit-image", "cv2": "opencv-python-headless"}


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
    segmented: int  # annotations with a usable polygon or RLE mask (rfdetr.coco_masks)


@dataclass
class Report:
    results: list[CheckResult] = field(default_factory=list)
    splits: list[SplitSummary] = field(default_factory=list)

    def counts(self) -> dict[Level, int]:
        return {level: sum(r.level is level for r in self.results) for level in Level}

    @property
    def ok(self) -> bool:  # warnings allowed
        return self.counts()[Level.FAIL] == 0

    def summary_lines(self) -> list[str]:
        counts = self.counts()
        return ["Summary: " + ", ".join(f"{counts[level]} {level.value}" for level in Level)] + [
            f"  {s.split}: {s.images} images, {s.annotations} annotations ({s.segmented} with masks), "
            f"{s.classes} classes" for s in self.splits]


def validate(dataset_dir: str | os.PathLike, stage: int = 1, check_env: bool = True, decode: bool = True) -> Report:
    """Environment checks (unless ``check_env`` is False) followed by :func:`check_dataset`."""
    report = check_dataset(dataset_dir, stage=stage, decode=decode)
    if check_env:
        report.results[:0] = check_environment()
    return report


def check_environment() -> list[CheckResult]:
    """Python version, every runtime dependency (imported, with its version) and the accelerators."""
    python_ok = sys.version_info[:2] >= MIN_PYTHON
    found = [(Level.PASS if python_ok else Level.FAIL, f"Python {platform.python_version()} (need >= 3.10)")]
    modules = {}
    for name in REQUIRED_MODULES + OPTIONAL_MODULES:
        try:
            modules[name] = importlib.import_module(name)
        except (ImportError, OSError) as error:  # OSError: a shared library that fails to load
            level, need = (Level.FAIL, "required") if name in REQUIRED_MODULES else (Level.WARN, "optional")
            found.append((level, f"cannot import {name} ({need}; pip install {_PIP_NAMES.get(name, name)}): {error}"))
        else:
            found.append((Level.PASS, f"{name} {_module_version(modules[name], _PIP_NAMES.get(name, name))}"))
    torch = modules.get("torch")
    if torch is not None and tuple(int(n) for n in re.findall(r"\d+", torch.__version__)[:2]) < MIN_TORCH:
        found.append((Level.WARN, f"torch {torch.__version__} is older than the required {MIN_TORCH}"))
    if torch is not None and torch.cuda.is_available():
        found.append((Level.PASS, f"CUDA {torch.version.cuda} available, {torch.cuda.device_count()} GPU(s)"))
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append((Level.PASS, f"GPU {index}: {props.name}, {props.total_memory / 2**30:.1f} GiB"))
    elif torch is not None and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append((Level.PASS, "no CUDA; Apple MPS available"))
    elif torch is not None:
        found.append((Level.WARN, "no CUDA GPU and no MPS: training would run on the CPU"))
    return [CheckResult(level, "env", message) for level, message in found]


def _module_version(module: object, distribution: str) -> str:
    try:
        return getattr(module, "__version__", None) or importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


class _Findings:
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


def check_dataset(dataset_dir: str | os.PathLike, stage: int = 1, decode: bool = True) -> Report:
    """Lint a COCO dataset folder; ``stage=2`` also requires a mask on every non-crowd annotation.
    ``decode=False`` reads only the image headers (existence and size) instead of decoding every image."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    root = Path(dataset_dir)
    report = Report()
    if not root.is_dir():
        report.results.append(CheckResult(Level.FAIL, "dataset", f"dataset folder {root} does not exist"))
        return report
    categories_by_split: dict[str, dict[int, str]] = {}
    for split in REQUIRED_SPLITS + OPTIONAL_SPLITS:
        folder = find_split_dir(root, split)  # the loader's rule: val/ serves valid too
        if folder is None or not (folder / ANNOTATION_FILE).is_file():
            report.results.append(_missing_split(root, split))
            continue
        results, summary, categories = _check_split(root, folder.name, stage, decode)
        report.results.extend(results)
        if summary is not None:
            report.splits.append(summary)
            categories_by_split[split] = categories
    report.results.extend(_compare_categories(categories_by_split))
    return report


def _missing_split(root: Path, split: str) -> CheckResult:
    where = f"{split}/{ANNOTATION_FILE}"
    if split in OPTIONAL_SPLITS:
        return CheckResult(Level.WARN, split, f"{where} not found: no test split (evaluation will use valid only)")
    return CheckResult(Level.FAIL, split, f"{where} not found: the {split} split is required")


def _check_split(root: Path, split: str, stage: int, decode: bool):
    """Returns (results, summary or None when the file is unusable, {category id: name})."""
    rel = f"{split}/{ANNOTATION_FILE}"
    data, error = _load_json(root / rel)
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if error is None and missing:
        error = f"missing or not a list: {', '.join(missing)}"
    if error is not None:
        return [CheckResult(Level.FAIL, split, f"{rel}: {error}")], None, {}

    found = _Findings(split, rel)
    images = _check_image_records(data["images"], found)
    categories, class_ids = _check_categories(data["categories"], found)
    _check_image_files(root / split, images, decode, found)
    class_counts, segmented = _check_annotations(data["annotations"], images, categories, class_ids, stage, found)
    if split == "train":
        for cid in sorted(cid for cid in class_ids if cid not in class_counts):
            found.add("annotations", Level.WARN, "classes without a training annotation", f"{categories[cid]} ({cid})")
    if not images:
        found.add("structure", Level.FAIL, "no images", "images list is empty")
    passes = {"structure": "JSON parses; images, annotations and categories are lists; ids unique",
              "categories": f"{len(class_ids)} classes",
              "images": f"{len(images)} image files exist{', decode' if decode else ''} and match their size",
              "annotations": f"{len(data['annotations'])} annotations: known images and categories, boxes inside",
              "segmentation": "every segmentation given is a usable mask"}
    if stage == 2:
        passes["stage2"] = "every non-crowd annotation has a segmentation"
    summary = SplitSummary(split, len(images), len(data["annotations"]), len(class_ids), segmented)
    return list(found.results(passes)), summary, categories


def _load_json(path: Path) -> tuple[dict, str | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        return {}, f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
    except (OSError, UnicodeDecodeError) as error:
        return {}, f"cannot read: {error}"
    if not isinstance(data, dict):
        return {}, f"top level is a {type(data).__name__}, not an object"
    return data, None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_image_records(records: list, found: _Findings) -> dict[int, dict]:
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


def _check_categories(records: list, found: _Findings) -> tuple[dict[int, str], set[int]]:
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


def _check_image_files(folder: Path, images: dict[int, dict], decode: bool, found: _Findings) -> None:
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
                       stage: int, found: _Findings) -> tuple[dict[int, int], int]:
    """Returns ({class id: annotation count}, number of annotations with a usable mask).

    Segmentations follow :mod:`rfdetr.coco_masks`, the loader's rule: one that is present but no
    usable mask is a WARN; in stage 2 a missing one is a WARN too, and a split without any mask a FAIL.
    """
    class_counts: dict[int, int] = {}  # class id -> annotations
    seen_ids, segmented = set(), 0
    not_crowd = sum(isinstance(a, dict) and a.get("iscrowd", 0) != 1 for a in records)
    for index, ann in enumerate(records):
        if not isinstance(ann, dict) or any(key not in ann for key in ("id", "image_id", "category_id", "bbox")):
            found.add("structure", Level.FAIL, "annotations without id, image_id, category_id or bbox", f"#{index}")
            continue
        aid = ann["id"]
        if not isinstance(aid, (int, str)) or aid in seen_ids:
            found.add("structure", Level.FAIL, "duplicate or non-scalar annotation ids", f"annotation {aid}")
        else:
            seen_ids.add(aid)
        image = images.get(ann["image_id"]) if _is_int(ann["image_id"]) else None
        if image is None:
            found.add("annotations", Level.FAIL, "unknown image_id", f"annotation {aid} (image_id {ann['image_id']})")
        category_id = ann["category_id"] if _is_int(ann["category_id"]) else None
        if category_id in class_ids:
            class_counts[category_id] = class_counts.get(category_id, 0) + 1
        else:
            problem = "category is the Roboflow project entry" if category_id in categories else "unknown category_id"
            found.add("annotations", Level.FAIL, problem, f"annotation {aid} (category_id {ann['category_id']})")
        problem = _bbox_problem(ann["bbox"], image)
        if problem is not None:
            found.add("annotations", problem[0], problem[1], f"annotation {aid}")
        if image is not None:  # the mask rule needs the image size
            _, problem = mask_rle(ann.get("segmentation"), image["height"], image["width"])
            segmented += problem is None
            if problem not in (None, NO_SEGMENTATION):
                found.add("segmentation", Level.WARN, f"{problem}: mask training keeps their boxes only",
                          f"annotation {aid}")
            elif problem == NO_SEGMENTATION and stage == 2 and ann.get("iscrowd", 0) != 1:
                found.add("stage2", Level.WARN, f"annotations without a segmentation (of {not_crowd} non-crowd): "
                          "stage 2 keeps their boxes only and segm evaluation ignores them", f"annotation {aid}")
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


def _compare_categories(categories_by_split: dict[str, dict[int, str]]) -> list[CheckResult]:
    if len(categories_by_split) < 2:
        return []
    reference_split, reference = next(iter(categories_by_split.items()))
    results = []
    for split, categories in list(categories_by_split.items())[1:]:
        differences = [f"id {cid}: {categories.get(cid, '-')!r} vs {reference.get(cid, '-')!r}" for cid in
                       sorted(categories.keys() | reference.keys()) if categories.get(cid) != reference.get(cid)]
        if differences:
            shown = "; ".join(differences[:MAX_LISTED]) + (" ..." if len(differences) > MAX_LISTED else "")
            results.append(CheckResult(Level.FAIL, "dataset", f"{split}/{ANNOTATION_FILE}: categories differ from "
                                       f"{reference_split}/{ANNOTATION_FILE} ({len(differences)}, {split} vs "
                                       f"{reference_split}): {shown}"))
    if not results:
        splits = ", ".join(categories_by_split)
        results.append(CheckResult(Level.PASS, "dataset", f"category ids and names agree across {splits}"))
    return results
