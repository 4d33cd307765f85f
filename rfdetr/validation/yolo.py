"""``validate_setup.py`` on a YOLO-format folder: the ``data.yaml``, every label line, then the COCO rules.

The checks are the loader's (:mod:`rfdetr.datasets.yolo`): a malformed ``data.yaml`` FAILs naming
the file (and line); each label problem is listed as ``file:line``, grouped by problem, FAIL or
WARN as the loader's rule says (the loader raises for every FAIL). The split's converted COCO
document then goes through :func:`rfdetr.validation.rules.check_document`, so a box outside its
image, an image that does not decode or a split without masks in stage 2 are judged as for a COCO
folder, with the label line named instead of an annotation id. No torch here.
"""

from __future__ import annotations

from pathlib import Path

from rfdetr.datasets.yolo import read_split
from rfdetr.datasets.yolo_layout import YoloFormatError, find_yaml, read_layout
from rfdetr.validation.rules import CheckResult, Findings, Level, SplitSummary, check_document, document_passes

REQUIRED_SPLITS = ("train", "valid")
OPTIONAL_SPLITS = ("test",)


def check_yolo_dataset(root: Path, stage: int, decode: bool) -> tuple[list[CheckResult], list[SplitSummary]]:
    """The results and split summaries of the YOLO folder ``root`` (it has a ``data.yaml``)."""
    yaml_path = find_yaml(root)
    if yaml_path is None:
        return [CheckResult(Level.FAIL, "dataset", f"{root} has no data.yaml or data.yml")], []
    try:
        layout = read_layout(yaml_path)
    except YoloFormatError as error:
        return [CheckResult(Level.FAIL, "dataset", str(error))], []
    names = ", ".join(f"{index}: {name}" for index, name in list(layout.names.items())[:10])
    results = [CheckResult(Level.PASS, "dataset", f"{yaml_path.name}: YOLO dataset, {len(layout.names)} classes "
                           f"({names}{', ...' if len(layout.names) > 10 else ''}), splits {', '.join(layout.splits)}")]
    results += [CheckResult(Level.WARN, "dataset", note) for note in layout.notes]
    summaries = []
    for split in REQUIRED_SPLITS + OPTIONAL_SPLITS:
        if layout.split_folders(split) is None:
            key = "'val' (or 'valid')" if split == "valid" else f"'{split}'"
            results.append(CheckResult(Level.WARN, split, f"{yaml_path.name}: no {key} entry: no test split "
                                       "(evaluation will use valid only)") if split in OPTIONAL_SPLITS else
                           CheckResult(Level.FAIL, split, f"{yaml_path.name}: no {key} entry: the {split} split "
                                       "is required"))
            continue
        split_results, summary = _check_split(layout, split, stage, decode)
        results += split_results
        summaries.append(summary)
    return results, summaries


def _check_split(layout, split: str, stage: int, decode: bool) -> tuple[list[CheckResult], SplitSummary]:
    found_split = read_split(layout, split)
    document = found_split.document
    folders = ", ".join(_relative(folder, layout.root) for folder in layout.split_folders(split))
    found = Findings(split, f"{layout.split_key(split)} ({folders})")
    for problem in found_split.problems:
        found.add("labels", Level(problem.level), problem.problem, problem.where)
    images, _, class_ids, segmented = check_document(document, found_split.root, found, stage=stage, decode=decode,
                                                     train=split == "train", name=lambda ann: ann["source"])
    labels = ", ".join(_relative(folder, layout.root) for folder in found_split.label_folders)
    passes = {"labels": f"{len(document['annotations'])} label lines in {labels}: classes in names, values in "
                        "[0, 1], boxes or polygons of 3+ points; every image has a label file and every label file "
                        "an image",
              **document_passes("image folders listed, label files read", document, images, class_ids, stage,
                                decode)}
    summary = SplitSummary(split, len(images), len(document["annotations"]), len(class_ids), segmented)
    return list(found.results(passes)), summary


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
