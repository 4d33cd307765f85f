"""Pre-flight checks before training: the Python environment and a COCO or YOLO dataset folder.

Each check yields :class:`CheckResult` lines: ``PASS`` (nothing found), ``WARN`` (training runs but
something is probably unintended: no test split, a box a few pixels past its image, a missing optional
package) or ``FAIL`` (training would crash or learn wrong targets: unreadable JSON, a missing or
truncated image, a NaN box, an unknown image or category id, a split without any mask in stage 2;
annotations without a usable mask are a WARN: mask training keeps their boxes). A problem names the
file and the first :data:`MAX_LISTED` offending image/annotation ids, with a count.

COCO layout: ``<dataset_dir>/{train,valid,test}/_annotations.coco.json``, images beside each
JSON; ``test`` is optional. Category ids go through :class:`rfdetr.classes.ClassTable` (a Roboflow
export's id-0 "none" project entry is not a class). A YOLO folder (a ``data.yaml``, the loader's
rule: :mod:`rfdetr.datasets.splits`) is checked by :mod:`rfdetr.validation.yolo`: its label lines
first, then the COCO document they make by the same rules (:mod:`rfdetr.validation.rules`).
``validate_setup.py`` is the front end.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rfdetr.datasets.coco_layout import ANNOTATION_FILE, find_split_dir
from rfdetr.datasets.splits import dataset_format
from rfdetr.validation.rules import (
    BOX_TOLERANCE,
    MAX_LISTED,
    CheckResult,
    Findings,
    Level,
    SplitSummary,
    check_document,
    document_passes,
)
from rfdetr.validation.yolo import OPTIONAL_SPLITS, REQUIRED_SPLITS, check_yolo_dataset

__all__ = ["ANNOTATION_FILE", "BOX_TOLERANCE", "MAX_LISTED", "CheckResult", "Level", "Report", "SplitSummary",
           "check_dataset", "check_environment", "validate"]

MIN_PYTHON = (3, 10)
MIN_TORCH = (2, 4)  # requirements.txt
# Import names of the runtime dependencies (requirements.txt); a missing optional one is a WARN.
REQUIRED_MODULES = ("torch", "torchvision", "numpy", "pydantic", "scipy", "PIL", "pycocotools", "supervision", "tqdm",
                    "tensorboard", "onnx", "onnxruntime", "skimage", "yaml")
OPTIONAL_MODULES = ("wandb", "onnxscript", "cv2", "psutil")
_PIP_NAMES = {"PIL": "pillow", "skimage": "scikit-image", "cv2": "opencv-python-headless", "yaml": "pyyaml"}


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


def check_dataset(dataset_dir: str | os.PathLike, stage: int = 1, decode: bool = True) -> Report:
    """Lint a COCO or YOLO dataset folder; ``stage=2`` also requires a mask on every non-crowd annotation.
    ``decode=False`` reads only the image headers (existence and size) instead of decoding every image."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    root = Path(dataset_dir)
    report = Report()
    if not root.is_dir():
        report.results.append(CheckResult(Level.FAIL, "dataset", f"dataset folder {root} does not exist"))
        return report
    if dataset_format(root) == "yolo":
        report.results, report.splits = check_yolo_dataset(root, stage, decode)
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

    found = Findings(split, rel)
    images, categories, class_ids, segmented = check_document(data, root / split, found, stage=stage, decode=decode,
                                                              train=split == "train")
    passes = document_passes("JSON parses; images, annotations and categories are lists; ids unique", data, images,
                             class_ids, stage, decode)
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
