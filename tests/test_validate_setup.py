"""validate_setup.py and rfdetr.validation on tiny generated COCO folders (a clean one, then one defect each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import validate_setup
from rfdetr.validation import Level, check_dataset, check_environment, checks

REPO_ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 40, 30
# Roboflow convention: id 0 is the project entry (supercategory "none"), the classes point to it.
CATEGORIES = [{"id": 0, "name": "pets", "supercategory": "none"},
              {"id": 1, "name": "cat", "supercategory": "pets"},
              {"id": 2, "name": "dog", "supercategory": "pets"}]


def _square(x: float, y: float, side: float) -> list[float]:
    return [x, y, x + side, y, x + side, y + side, x, y + side]


def make_dataset(root: Path, splits=("train", "valid", "test")) -> Path:
    """Two 40x30 PNGs per split, three annotations (both classes) with polygon masks."""
    for split in splits:
        folder = root / split
        folder.mkdir(parents=True)
        images = []
        for image_id in (1, 2):
            name = f"{split}_{image_id}.png"
            Image.new("RGB", (WIDTH, HEIGHT), (image_id * 60, 80, 120)).save(folder / name)
            images.append({"id": image_id, "file_name": name, "width": WIDTH, "height": HEIGHT})
        annotations = [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 10], "iscrowd": 0, "area": 100,
             "segmentation": [_square(2, 3, 10)]},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [20, 10, 15, 12], "iscrowd": 0, "area": 180,
             "segmentation": [[20, 10, 35, 10, 35, 22, 20, 22]]},
            {"id": 12, "image_id": 2, "category_id": 2, "bbox": [0, 0, 40, 30], "iscrowd": 0, "area": 1200,
             "segmentation": [_square(0, 0, 30)]},
        ]
        document = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (folder / checks.ANNOTATION_FILE).write_text(json.dumps(document, indent=1))
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "dataset")


def edit(root: Path, split: str, change) -> None:
    """Apply ``change(document)`` to a split's annotation file."""
    path = root / split / checks.ANNOTATION_FILE
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def annotation(document: dict, annotation_id: int) -> dict:
    return next(a for a in document["annotations"] if a["id"] == annotation_id)


def run(capsys, root: Path, *extra: str) -> tuple[int, str]:
    code = validate_setup.main(["--dataset_dir", str(root), "--skip_env", *extra])
    return code, capsys.readouterr().out


def lines(output: str, level: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"[{level}]")]


def only_line(output: str, level: str, *fragments: str) -> str:
    """The one ``level`` line containing every fragment."""
    found = [line for line in lines(output, level) if all(f in line for f in fragments)]
    assert len(found) == 1, f"expected one [{level}] line with {fragments}, got {found}\n{output}"
    return found[0]


# ---- a clean dataset ------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["1", "2"])
def test_clean_dataset_passes(capsys, dataset, stage):
    code, output = run(capsys, dataset, "--stage", stage)
    assert code == 0, output
    assert not lines(output, "FAIL") and not lines(output, "WARN"), output
    assert "train: 2 images, 3 annotations (3 with masks), 2 classes" in output
    assert "category ids and names agree across train, valid, test" in output
    assert "OK: ready to train" in output


def test_no_decode_passes_clean_dataset(capsys, dataset):
    code, output = run(capsys, dataset, "--no_decode")
    assert code == 0 and not lines(output, "FAIL"), output


def test_report_api(dataset):
    report = check_dataset(dataset, stage=2)
    assert report.ok and report.counts()[Level.FAIL] == 0
    assert [s.split for s in report.splits] == ["train", "valid", "test"]
    assert report.splits[0].classes == 2  # the Roboflow project entry is no class
    with pytest.raises(ValueError):
        check_dataset(dataset, stage=3)


# ---- layout and files -----------------------------------------------------------------------------
def test_missing_required_split_fails(capsys, tmp_path):
    root = make_dataset(tmp_path / "d", splits=("train", "test"))
    code, output = run(capsys, root)
    assert code == 1
    only_line(output, "FAIL", "valid/_annotations.coco.json", "not found")


def test_a_val_folder_serves_the_linter_and_the_loader_alike(capsys, tmp_path):
    from rfdetr.datasets import build_dataset

    root = make_dataset(tmp_path / "d")
    (root / "valid").rename(root / "val")  # the COCO / Ultralytics name
    code, output = run(capsys, root)
    assert code == 0 and not lines(output, "FAIL"), output
    valid = build_dataset(root, "valid", train=False, resolution=64)
    assert valid.split_dir == root / "val" and len(valid) == len(build_dataset(root, "val", resolution=64))


def test_missing_test_split_warns(capsys, tmp_path):
    root = make_dataset(tmp_path / "d", splits=("train", "valid"))
    code, output = run(capsys, root)
    assert code == 0
    only_line(output, "WARN", "test/_annotations.coco.json", "not found")


def test_missing_dataset_folder_fails(capsys, tmp_path):
    code, output = run(capsys, tmp_path / "nowhere")
    assert code == 1
    only_line(output, "FAIL", "does not exist")


def test_broken_json_reports_line_and_column(capsys, dataset):
    (dataset / "valid" / checks.ANNOTATION_FILE).write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    code, output = run(capsys, dataset)
    assert code == 1
    only_line(output, "FAIL", "valid/_annotations.coco.json", "invalid JSON at line 3, column")


def test_missing_keys_fail(capsys, dataset):
    edit(dataset, "train", lambda d: d.pop("categories"))
    code, output = run(capsys, dataset)
    assert code == 1
    only_line(output, "FAIL", "train/_annotations.coco.json", "categories")


def test_missing_image_file_fails(capsys, dataset):
    (dataset / "train" / "train_2.png").unlink()
    code, output = run(capsys, dataset)
    assert code == 1
    only_line(output, "FAIL", "train/_annotations.coco.json", "missing", "image 2 train_2.png")


def test_truncated_image_fails(capsys, dataset):
    path = dataset / "valid" / "valid_1.png"
    Image.effect_noise((WIDTH, HEIGHT), 50).convert("RGB").save(path)  # noise: incompressible, so a long file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, output = run(capsys, dataset)
    assert code == 1
    only_line(output, "FAIL", "valid/_annotations.coco.json", "do not decode", "image 1 valid_1.png")


def test_image_size_mismatch_warns(capsys, dataset):
    Image.new("RGB", (WIDTH + 5, HEIGHT), 0).save(dataset / "test" / "test_2.png")
    code, output = run(capsys, dataset)
    assert code == 0
    only_line(output, "WARN", "test/_annotations.coco.json", "image 2 test_2.png is 45x30, JSON says 40x30")


@pytest.mark.parametrize("decode", [True, False])
def test_exif_turned_image_is_checked_upright(capsys, dataset, decode):
    """The JSON gives the size a viewer shows (and training reads): the file's raw size turned by EXIF."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (HEIGHT, WIDTH), 0).save(dataset / "train" / "train_1.jpg", exif=exif)
    edit(dataset, "train", lambda d: d["images"][0].update(file_name="train_1.jpg"))
    code, output = run(capsys, dataset, *([] if decode else ["--no_decode"]))
    assert code == 0, output
    assert "image sizes differ" not in output


def test_float_image_outside_zero_one_fails(capsys, dataset):
    values = np.full((HEIGHT, WIDTH), 2.0, np.float32)  # training could not read it: not intensities in [0, 1]
    Image.fromarray(values).save(dataset / "valid" / "valid_2.tif")
    edit(dataset, "valid", lambda d: d["images"][1].update(file_name="valid_2.tif"))
    code, output = run(capsys, dataset)
    assert code == 1
    only_line(output, "FAIL", "do not decode", "image 2 valid_2.tif", "must be in [0, 1]")


def test_duplicate_image_ids_fail(capsys, dataset):
    edit(dataset, "train", lambda d: d["images"][1].update(id=1))
    code, output = run(capsys, dataset)
    assert code == 1
    only_line(output, "FAIL", "train/_annotations.coco.json", "duplicate image ids", "image 1")


# ---- boxes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bbox, level, text", [
    ([float("nan"), 3, 10, 10], "FAIL", "NaN"),
    ([2, 3, -10, 10], "FAIL", "negative width or height"),
    ([2, 3, 10], "FAIL", "not a list of 4 numbers"),
    ([35, 3, 8, 10], "WARN", "past its image"),  # reaches x = 43 in a 40 px image
    ([50, 3, 10, 10], "FAIL", "entirely outside"),
])
def test_bad_bbox_is_flagged(capsys, dataset, bbox, level, text):
    edit(dataset, "train", lambda d: annotation(d, 11).update(bbox=bbox))
    code, output = run(capsys, dataset)
    assert code == (1 if level == "FAIL" else 0), output
    only_line(output, level, "train/_annotations.coco.json", text, "annotation 11")


def test_box_within_tolerance_passes(capsys, dataset):
    edit(dataset, "train", lambda d: annotation(d, 12).update(bbox=[-0.5, 0, 40.9, 30.5]))
    code, output = run(capsys, dataset)
    assert code == 0 and not lines(output, "WARN"), output


# ---- references and categories -----------------------------------------------------------------------
def test_unknown_category_id_fails(capsys, dataset):
    edit(dataset, "valid", lambda d: annotation(d, 10).update(category_id=7))
    code, output = run(capsys, dataset)
    assert code == 1
    only_line(output, "FAIL", "valid/_annotations.coco.json", "unknown category_id", "annotation 10 (category_id 7)")


def test_annotation_on_roboflow_project_entry_fails(capsys, dataset):
    edit(dataset, "valid", lambda d: annotation(d, 10).update(category_id=0))
    code, output = run(capsys, dataset)
    assert code == 1
    only_line(output, "FAIL", "valid/_annotations.coco.json", "project entry", "annotation 10")


def test_unknown_image_id_fails(capsys, dataset):
    edit(dataset, "train", lambda d: annotation(d, 12).update(image_id=99))
    code, output = run(capsys, dataset)
    assert code == 1
    only_line(output, "FAIL", "train/_annotations.coco.json", "unknown image_id", "annotation 12 (image_id 99)")


def test_category_mismatch_across_splits_fails(capsys, dataset):
    def rename(document):
        document["categories"] = [dict(c, name="wolf") if c["id"] == 2 else c for c in document["categories"]]

    edit(dataset, "valid", rename)
    code, output = run(capsys, dataset)
    assert code == 1
    only_line(output, "FAIL", "valid/_annotations.coco.json", "categories differ", "id 2: 'wolf' vs 'dog'")


def test_class_without_training_annotations_warns(capsys, dataset):
    edit(dataset, "train", lambda d: d["annotations"].pop(0))  # the only "cat"
    code, output = run(capsys, dataset)
    assert code == 0
    only_line(output, "WARN", "train/_annotations.coco.json", "cat (1)")


def test_offenders_are_capped(capsys, dataset):
    def many_bad(document):
        document["annotations"] = [dict(annotation(document, 10), id=100 + i, bbox=[1, 1, 0, 5]) for i in range(8)]

    edit(dataset, "train", many_bad)
    code, output = run(capsys, dataset)
    line = only_line(output, "WARN", "zero width or height")
    assert "(8)" in line and "annotation 104" in line and "annotation 105" not in line and "+3 more" in line


# ---- segmentation ------------------------------------------------------------------------------------
# annotation 11's segmentation (image 1, 40x30) -> whether it is a usable mask
SEGMENTATIONS = {
    "polygon": ([[20, 10, 35, 10, 35, 22, 20, 22]], True),
    "polygon and a two-point piece": ([[20, 10, 35, 10, 35, 22, 20, 22], [1, 1, 2, 2]], True),
    "uncompressed RLE": ({"size": [HEIGHT, WIDTH], "counts": [5, 10, WIDTH * HEIGHT - 15]}, True),
    "compressed RLE": ({"size": [HEIGHT, WIDTH], "counts": "5:QU1"}, True),
    "missing": (None, False),
    "empty": ([], False),
    "two points": ([[20, 10, 35, 10]], False),
    "three points on a line": ([[20, 10, 25, 15, 30, 20]], False),
    "odd coordinate count": ([[20, 10, 35, 10, 35, 22, 20]], False),
    "RLE of another size": ({"size": [HEIGHT + 1, WIDTH], "counts": [0, WIDTH * (HEIGHT + 1)]}, False),
    "RLE without pixels": ({"size": [HEIGHT, WIDTH], "counts": [WIDTH * HEIGHT]}, False),
    "garbage RLE": ({"size": [HEIGHT, WIDTH], "counts": "not an RLE"}, False),
    "neither": ("a string", False),
}


@pytest.mark.parametrize("name", list(SEGMENTATIONS))
def test_linter_and_loader_agree_on_which_segmentations_are_masks(capsys, dataset, name):
    from rfdetr.datasets import CocoDetection  # torch: only here, the linter itself must not import it

    segmentation, usable = SEGMENTATIONS[name]

    def change(document):
        if segmentation is None:
            del annotation(document, 11)["segmentation"]
        else:
            annotation(document, 11)["segmentation"] = segmentation

    edit(dataset, "train", change)
    code, output = run(capsys, dataset, "--stage", "2")
    assert code == 0, output  # a WARN at most: the other annotations have masks
    flagged = [line for line in lines(output, "WARN") if "annotation 11" in line]
    assert len(flagged) == (0 if usable else 1), output
    assert all("train/_annotations.coco.json" in line and "boxes only" in line for line in flagged)
    target = CocoDetection(dataset / "train", masks=True)[0][1]  # image 1: annotations 10 and 11
    assert target["has_mask"].tolist() == [True, usable]
    assert bool(target["masks"][1].any()) == usable


def test_stage2_warns_about_missing_masks_and_fails_without_any(capsys, dataset):
    def drop_masks(document):
        annotation(document, 10)["segmentation"] = []
        del annotation(document, 12)["segmentation"]
        document["annotations"].append(dict(annotation(document, 11), id=13, iscrowd=1, segmentation=[]))

    edit(dataset, "valid", drop_masks)
    code, output = run(capsys, dataset, "--stage", "1")
    assert code == 0 and "annotation 10" not in output, output  # stage 1 needs no masks
    code, output = run(capsys, dataset, "--stage", "2")
    assert code == 0, output
    line = only_line(output, "WARN", "valid/_annotations.coco.json", "without a segmentation (of 3 non-crowd)",
                     "(2)")
    assert "annotation 10, annotation 12" in line and "annotation 13" not in line  # crowd ones need no mask
    assert "valid: 2 images, 4 annotations (1 with masks)" in output

    edit(dataset, "valid", lambda d: annotation(d, 11).pop("segmentation"))
    code, output = run(capsys, dataset, "--stage", "2")
    assert code == 1
    only_line(output, "FAIL", "valid/_annotations.coco.json", "no usable mask", "0 of 4 annotations")
    assert lines(output, "FAIL") == [line for line in lines(output, "FAIL") if "valid/" in line]


# ---- environment and the script itself --------------------------------------------------------------
def _accelerators(monkeypatch, cuda_gpus: int, mps: bool) -> None:
    """Make torch report ``cuda_gpus`` CUDA devices (named "Fake GPU <i>", 8 GiB) and MPS or not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_gpus)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(name=f"Fake GPU {index}", total_memory=8 * 2**30))
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def _accelerator_lines() -> list[tuple[Level, str]]:
    """The environment results after the Python and module lines: torch version and accelerators."""
    first = 1 + len(checks.REQUIRED_MODULES + checks.OPTIONAL_MODULES)
    return [(r.level, r.message) for r in check_environment()[first:]]


def test_environment_lists_python_and_every_module_once():
    results = check_environment()
    assert not [r for r in results if r.level is Level.FAIL], results  # this project's venv has every dependency
    messages = [r.message for r in results]
    assert messages[0].startswith(f"Python {sys.version_info.major}.{sys.version_info.minor}.")
    modules = checks.REQUIRED_MODULES + checks.OPTIONAL_MODULES
    # One line per module, in order: "<import name> <version>" or "cannot import <import name> (...)".
    named = [m.removeprefix("cannot import ").split()[0] for m in messages[1:1 + len(modules)]]
    assert named == list(modules)
    assert f"numpy {np.__version__}" in messages


@pytest.mark.parametrize("cuda_gpus, mps, expected", [
    (2, False, [(Level.PASS, "CUDA 12.4 available, 2 GPU(s)"), (Level.PASS, "GPU 0: Fake GPU 0, 8.0 GiB"),
                (Level.PASS, "GPU 1: Fake GPU 1, 8.0 GiB")]),
    (1, True, [(Level.PASS, "CUDA 12.4 available, 1 GPU(s)"), (Level.PASS, "GPU 0: Fake GPU 0, 8.0 GiB")]),
    (0, True, [(Level.PASS, "no CUDA; Apple MPS available")]),
    (0, False, [(Level.WARN, "no CUDA GPU and no MPS: training would run on the CPU")]),
])
def test_accelerator_lines(monkeypatch, cuda_gpus, mps, expected):
    _accelerators(monkeypatch, cuda_gpus, mps)
    assert _accelerator_lines() == expected


@pytest.mark.parametrize("version, warns", [("2.3.1+cpu", True), ("1.13.0", True), ("2.4.0", False),
                                            ("2.10.0+cu128", False)])  # 2.10 is newer than 2.4, not older
def test_old_torch_warns(monkeypatch, version, warns):
    _accelerators(monkeypatch, 1, False)
    monkeypatch.setattr(checks, "MIN_TORCH", (2, 4))
    monkeypatch.setattr(torch, "__version__", version)
    lines = _accelerator_lines()
    old = (Level.WARN, f"torch {version} is older than the required (2, 4)")
    assert lines[0] == old if warns else old not in lines
    assert lines[-2:] == [(Level.PASS, "CUDA 12.4 available, 1 GPU(s)"), (Level.PASS, "GPU 0: Fake GPU 0, 8.0 GiB")]


def test_old_python_fails(monkeypatch):
    monkeypatch.setattr(checks, "MIN_PYTHON", (sys.version_info.major, sys.version_info.minor + 1))
    first = check_environment()[0]
    assert first.level is Level.FAIL and first.message.startswith("Python ")


def test_missing_modules_fail_or_warn(monkeypatch):
    monkeypatch.setattr(checks, "REQUIRED_MODULES", ("numpy", "no_such_required_module"))
    monkeypatch.setattr(checks, "OPTIONAL_MODULES", ("no_such_optional_module",))
    levels = {r.message.split(" (")[0]: r.level for r in check_environment()}
    assert levels["cannot import no_such_required_module"] is Level.FAIL
    assert levels["cannot import no_such_optional_module"] is Level.WARN


def test_help_is_fast_and_does_not_import_torch():
    completed = subprocess.run([sys.executable, "validate_setup.py", "--help"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=30)
    assert completed.returncode == 0 and "--dataset_dir" in completed.stdout and "--no_decode" in completed.stdout
    probe = ("import sys, validate_setup\n"
             "try:\n    validate_setup.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print('torch' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=30)
    assert completed.stdout.strip().splitlines()[-1] == "False", completed.stdout + completed.stderr


def test_dataset_lint_does_not_import_torch(dataset):
    probe = (f"import sys, validate_setup\ncode = validate_setup.main(['--dataset_dir', {str(dataset)!r}, "
             "'--skip_env'])\nprint(code, 'torch' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=60)
    assert completed.stdout.strip().splitlines()[-1] == "0 False", completed.stdout + completed.stderr


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as exit_info:
        validate_setup.main(["--stage", "3"])
    assert exit_info.value.code == 2
