"""YOLO-format datasets: data.yaml layouts, label rules shared by the loader and validate_setup.py, training.

The synthetic writer gives one scene set as COCO (``make_synthetic_coco``) and as YOLO
(``make_synthetic_yolo``, boxes or polygons): the two must train alike, and each bad YOLO input must
be a named error from both the loader and ``validate_setup.py`` (file and line).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_detector_stage1
import train_seg_stage2
import validate_setup
from rfdetr import RFDETRNano
from rfdetr.checkpoints.files import read_checkpoint
from rfdetr.classes import ClassTable
from rfdetr.datasets import build_dataset, dataset_classes, load_split, make_synthetic_coco, make_synthetic_yolo
from rfdetr.datasets.synthetic import main as synthetic_main
from rfdetr.datasets.yolo_layout import YoloFormatError
from rfdetr.validation import Level, check_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]
SCENES = dict(seed=3, num_train=4, num_valid=2, num_test=0, image_size=(96, 96))
TINY_RUN = ["--resolution", "64", "--epochs", "1", "--batch", "2", "--accum", "1", "--multi_scale", "0",
            "--workers", "0", "--device", "cpu", "--tensorboard", "0"]
TINY_MODEL = ["--num_queries", "20", "--group_detr", "1", "--gradient_checkpointing", "0"]
NAMES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> dict[str, Path]:
    """One scene set as COCO, YOLO boxes and YOLO polygons."""
    root = tmp_path_factory.mktemp("copies")
    return {"coco": make_synthetic_coco(root / "coco", **SCENES),
            "detect": make_synthetic_yolo(root / "detect", **SCENES),
            "segment": make_synthetic_yolo(root / "segment", task="segment", **SCENES)}


def write_yolo(root: Path, yaml_text: str, labels: dict[str, str], size: tuple[int, int] = (40, 30)) -> Path:
    """A hand-made YOLO folder: ``labels`` maps image paths (relative to ``root``) to label text."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml_text)
    for image, text in labels.items():
        path = root / image
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (90, 120, 150)).save(path)
        label = Path(*["labels" if p == "images" else p for p in Path(image).parts]).with_suffix(".txt")
        (root / label).parent.mkdir(parents=True, exist_ok=True)
        (root / label).write_text(text)
    return root


def lines(report, level: Level) -> list[str]:
    """The messages of ``level``, leaving out the WARN of a dataset without a test split."""
    return [r.message for r in report.results if r.level is level and "no 'test' entry" not in r.message]


# ---- layouts ---------------------------------------------------------------------------------------
def test_names_as_a_list_or_a_mapping_give_one_class_table(tmp_path):
    labels = {"images/train/a.png": "0 0.5 0.5 0.2 0.2\n", "images/val/b.png": "1 0.5 0.5 0.2 0.2\n"}
    listed = write_yolo(tmp_path / "list", "names: [cat, dog]\ntrain: images/train\nval: images/val\n", labels)
    mapped = write_yolo(tmp_path / "map", "nc: 2\nnames:\n  0: cat\n  1: dog\ntrain: images/train\nval: images/val\n",
                        labels)
    table = dataset_classes(listed)
    assert table == dataset_classes(mapped) and table.names == ["cat", "dog"]
    # Class 0 is a class (no Roboflow project entry in YOLO): category id = class index.
    assert [(e.label, e.category_id) for e in table.entries] == [(0, 0), (1, 1)] and table.num_rows == 3
    assert build_dataset(mapped, "valid", resolution=64)[0][1]["labels"].tolist() == [1]


def test_roboflow_layout_valid_split_and_parent_paths(tmp_path):
    """Roboflow writes train/images + train/labels, a 'valid' folder and '../x/images' paths."""
    root = write_yolo(tmp_path, "names: [cat]\ntrain: ../train/images\nval: ../valid/images\n",
                      {"train/images/a.png": "0 0.5 0.5 0.5 0.5\n", "valid/images/b.png": "0 0.25 0.5 0.5 1\n"})
    for split in ("val", "valid"):
        dataset = build_dataset(root, split, resolution=64, train=False)
        assert dataset.split_dir == root and len(dataset) == 1
    target = load_split(root, "valid").document["annotations"][0]
    assert target["bbox"] == pytest.approx([0.0, 0.0, 20.0, 30.0])  # 40 x 30 image
    assert check_dataset(root).ok


def test_valid_key_and_path_relative_to_the_yaml(tmp_path):
    root = write_yolo(tmp_path, "path: data\nnames: [cat]\ntrain: images/train\nvalid: images/val\n",
                      {"data/images/train/a.png": "0 0.5 0.5 0.5 0.5\n", "data/images/val/b.png": ""})
    assert len(build_dataset(root, "valid", resolution=64)) == 1
    assert load_split(root, "train").document["images"][0]["file_name"] == "images/train/a.png"
    report = check_dataset(root)
    assert report.ok and not lines(report, Level.WARN)  # an empty label file: an image without objects


def test_a_path_that_is_not_here_falls_back_to_the_yaml_folder(tmp_path):
    root = write_yolo(tmp_path, "path: ../datasets/elsewhere\nnames: [cat]\ntrain: images/train\nval: images/train\n",
                      {"images/train/a.png": "0 0.5 0.5 0.5 0.5\n"})
    assert len(build_dataset(root, "train", resolution=64)) == 1
    assert any("'path: ../datasets/elsewhere' is not a folder" in m for m in lines(check_dataset(root), Level.WARN))


def test_an_image_without_a_label_file_has_no_objects_and_warns(tmp_path):
    root = write_yolo(tmp_path, "names: [cat]\ntrain: images/train\nval: images/train\n",
                      {"images/train/a.png": "0 0.5 0.5 0.5 0.5\n", "images/train/b.png": ""})
    (root / "labels" / "train" / "b.txt").unlink()
    assert [len(target["labels"]) for _, target in build_dataset(root, "train", resolution=64, train=False)] == [1, 0]
    warnings = lines(check_dataset(root), Level.WARN)
    assert any("images without a label file" in m and "images/train/b.png" in m for m in warnings)


# ---- bad input: a named error from the loader and a FAIL naming file and line -------------------------
BAD = {
    "bad class index": ("0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n", "class index outside names", ":2"),
    "class not an integer": ("cat 0.5 0.5 0.2 0.2\n", "class index is not an integer", ":1"),
    "values outside [0, 1]": ("0 0.5 0.5 0.2 0.2\n\n1 1.5 0.5 0.2 0.2\n", "values outside [0, 1]", ":3"),
    "2-point polygon": ("0 0.1 0.1 0.5 0.1 0.3 0.6\n1 0.1 0.1 0.4 0.4\n", "polygons of fewer than 3 points", ":2"),
    "odd coordinates": ("0 0.1 0.1 0.5 0.1 0.3\n", "an odd number of coordinates", ":1"),
    "1-point polygon": ("2 0.5 0.5\n", "polygons of fewer than 3 points", ":1"),
    "not numbers": ("0 0.5 nan 0.2 0.2\n", "values that are not finite numbers", ":1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_label_lines_are_named_by_the_loader_and_validate_setup(case, tmp_path, capsys):
    text, problem, line = BAD[case]
    root = write_yolo(tmp_path, "names: [cat, dog, bird]\ntrain: images/train\nval: images/val\n",
                      {"images/train/a.png": "0 0.5 0.5 0.2 0.2\n", "images/train/b.png": text,
                       "images/val/c.png": "1 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(YoloFormatError, match=re.escape(problem) + r".*: labels/train/b\.txt" + line):
        build_dataset(root, "train", resolution=64)
    assert validate_setup.main(["--dataset_dir", str(root), "--skip_env"]) == 1
    failed = [m for m in capsys.readouterr().out.splitlines() if m.startswith("[FAIL]")]
    assert len(failed) == 1 and problem in failed[0] and f"labels/train/b.txt{line}" in failed[0]


def test_a_label_file_without_its_image(tmp_path, capsys):
    root = write_yolo(tmp_path, "names: [cat]\ntrain: images/train\nval: images/train\n",
                      {"images/train/a.png": "0 0.5 0.5 0.2 0.2\n", "images/train/b.png": "0 0.5 0.5 0.2 0.2\n"})
    (root / "images" / "train" / "b.png").unlink()
    with pytest.raises(YoloFormatError, match=r"label files without an image: labels/train/b\.txt"):
        build_dataset(root, "train", resolution=64)
    assert validate_setup.main(["--dataset_dir", str(root), "--skip_env"]) == 1
    assert "label files without an image (1): labels/train/b.txt" in capsys.readouterr().out


@pytest.mark.parametrize("yaml_text, message", [
    ("names: [cat, dog\ntrain: images/train\n", r"data\.yaml:\d+: not valid YAML"),
    ("- cat\n- dog\n", "expected a mapping"),
    ("train: images/train\nval: images/train\n", "'names' must be a list"),
    ("nc: 3\nnames: [cat, dog]\ntrain: images/train\nval: images/train\n", "'nc' is 3 but 'names' has 2"),
    ("names: [cat, cat]\ntrain: images/train\nval: images/train\n", "class names must be distinct"),
    ("names: {a: cat}\ntrain: images/train\nval: images/train\n", "'names' key 'a' is not a class index"),
])
def test_a_malformed_data_yaml_is_named(yaml_text, message, tmp_path, capsys):
    root = write_yolo(tmp_path, yaml_text, {"images/train/a.png": "0 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(YoloFormatError, match=message):
        dataset_classes(root)
    assert validate_setup.main(["--dataset_dir", str(root), "--skip_env"]) == 1
    failed = [m for m in capsys.readouterr().out.splitlines() if m.startswith("[FAIL]")]
    assert len(failed) == 1 and "data.yaml" in failed[0]


def test_a_box_past_the_image_is_judged_by_the_coco_rule(tmp_path):
    """cx, cy, w, h inside [0, 1] can still reach past the image: WARN and clamp, as for a COCO bbox."""
    root = write_yolo(tmp_path, "names: [cat]\ntrain: images/train\nval: images/train\n",
                      {"images/train/a.png": "0 0.9 0.5 0.5 0.2\n"})
    warnings = lines(check_dataset(root), Level.WARN)
    assert any("bbox reaches more than 1 px past its image" in m and "labels/train/a.txt:1" in m for m in warnings)
    boxes = build_dataset(root, "train", resolution=64, train=False).load_target(0, 40, 30)["boxes"]
    assert boxes.tolist() == [[pytest.approx(26.0), pytest.approx(12.0), 40.0, pytest.approx(18.0)]]


# ---- the synthetic writer ------------------------------------------------------------------------
def test_yolo_copies_hold_the_coco_images_boxes_and_masks(copies):
    for split in ("train", "valid"):
        coco = build_dataset(copies["coco"], split, resolution=96, train=False, masks=True)
        detect = build_dataset(copies["detect"], split, resolution=96, train=False)
        segment = build_dataset(copies["segment"], split, resolution=96, train=False, masks=True)
        assert len(coco) == len(detect) == len(segment) == SCENES[f"num_{split}"]
        for index in range(len(coco)):
            expected, boxes, masks = coco[index], detect[index], segment[index]
            assert torch.equal(expected[0], boxes[0]) and torch.equal(expected[0], masks[0])
            assert torch.equal(expected[1]["boxes"], boxes[1]["boxes"])
            assert torch.equal(expected[1]["labels"], boxes[1]["labels"])
            assert torch.equal(expected[1]["labels"], masks[1]["labels"]) and masks[1]["has_mask"].all()
            # Traced outlines of occluded shapes (pieces and holes bridged) differ from the painted pixels
            # by at most a sliver.
            overlap = (expected[1]["masks"] & masks[1]["masks"]).sum((1, 2)).float()
            union = (expected[1]["masks"] | masks[1]["masks"]).sum((1, 2)).float()
            assert (overlap / union).min() > 0.95


def test_the_command_line_writes_a_yolo_folder(tmp_path):
    synthetic_main([str(tmp_path / "seg"), "--format", "yolo", "--task", "segment", "--num_train", "2",
                    "--num_valid", "1", "--num_test", "1", "--image_size", "64", "64"])
    folder = tmp_path / "seg"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "data.yaml", "images/test/test_00000.jpg", "images/train/train_00000.jpg", "images/train/train_00001.jpg",
        "images/val/valid_00000.jpg", "labels/test/test_00000.txt", "labels/train/train_00000.txt",
        "labels/train/train_00001.txt", "labels/val/valid_00000.txt"]
    assert all(len(line.split()) >= 7 for line in (folder / "labels/train/train_00000.txt").read_text().splitlines())
    report = check_dataset(folder, stage=2)
    assert report.ok and not [m for m in lines(report, Level.WARN) if "classes without" not in m]


def test_validate_setup_reads_a_yolo_folder_without_torch(copies):
    done = subprocess.run([sys.executable, "-c", "import sys, validate_setup\n"
                           f"code = validate_setup.main(['--dataset_dir', {str(copies['segment'])!r}, '--skip_env',"
                           " '--stage', '2'])\nprint(code, 'torch' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("0 False"), done.stdout + done.stderr


# ---- training ------------------------------------------------------------------------------------
def _stage1(dataset: Path, run: Path) -> dict:
    code = train_detector_stage1.main(["--size", "nano", "--pretrain_weights", "none", "--dataset_dir", str(dataset),
                                       "--output_dir", str(run), "--seed", "7", *TINY_RUN, *TINY_MODEL])
    assert code == 0
    return json.loads((run / "log.txt").read_text().splitlines()[0])


@pytest.mark.slow  # two stage-1 runs and a short RFDETR.train()
def test_coco_and_yolo_copies_train_alike(copies, tmp_path):
    coco = _stage1(copies["coco"], tmp_path / "coco")
    yolo = _stage1(copies["detect"], tmp_path / "yolo")
    assert dataset_classes(copies["coco"]).names == dataset_classes(copies["detect"]).names == NAMES
    coco_classes = ClassTable.from_dict(read_checkpoint(tmp_path / "coco" / "checkpoint_best_total.pth")["classes"])
    yolo_classes = ClassTable.from_dict(read_checkpoint(tmp_path / "yolo" / "checkpoint_best_total.pth")["classes"])
    assert coco_classes.names == yolo_classes.names == NAMES and coco_classes.num_rows == yolo_classes.num_rows
    assert [e.category_id for e in yolo_classes.entries] == [0, 1, 2]  # the YOLO class indices
    losses = sorted(key for key in coco if "loss" in key)
    assert "train_loss" in losses and "valid_loss" in losses
    assert {key: yolo[key] for key in losses} == pytest.approx({key: coco[key] for key in losses}, rel=1e-5)
    # COCO evaluation of the converted ground truth scores the same detections the same.
    assert yolo["valid_bbox_AP"] == pytest.approx(coco["valid_bbox_AP"], abs=1e-9)
    assert json.loads((tmp_path / "yolo" / "results.json").read_text()).keys() == json.loads(
        (tmp_path / "coco" / "results.json").read_text()).keys()
    # RFDETR.train() takes the YOLO folder too.
    wrapper = RFDETRNano(pretrain_weights=str(tmp_path / "yolo" / "checkpoint_best_total.pth"), device="cpu")
    wrapper.train(dataset_dir=str(copies["detect"]), output_dir=str(tmp_path / "api"), epochs=1, batch_size=2,
                  resolution=64, max_steps_per_epoch=1, multi_scale=False, num_workers=0, tensorboard=False)
    assert list(wrapper.class_names.values()) == NAMES and (tmp_path / "api" / "results.json").is_file()


@pytest.mark.slow  # a stage-1 run, then a stage-2 run
def test_stage2_on_a_yolo_segment_folder_trains_masks(copies, tmp_path, capsys):
    _stage1(copies["segment"], tmp_path / "detector")
    run = tmp_path / "masks"
    code = train_seg_stage2.main(["--stage1_run", str(tmp_path / "detector"), "--dataset_dir", str(copies["segment"]),
                                  "--output_dir", str(run), *TINY_RUN])
    assert code == 0, capsys.readouterr().out
    record = json.loads((run / "log.txt").read_text().splitlines()[-1])
    assert record["train_loss_mask"] > 0 and record["train_loss_dice"] > 0 and "valid_segm_AP" in record
    assert "masks" in json.loads((run / "results.json").read_text())
    # The detector-only copy has no polygon: the mask stage refuses it, naming the data.yaml.
    code = train_seg_stage2.main(["--stage1_run", str(tmp_path / "detector"), "--dataset_dir", str(copies["detect"]),
                                  "--output_dir", str(tmp_path / "none"), *TINY_RUN])
    assert code != 0 and "data.yaml has no segmentation usable as a mask" in capsys.readouterr().err


def test_nothing_is_written_into_the_yolo_folder(copies, tmp_path):
    folder = shutil.copytree(copies["segment"], tmp_path / "copy")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    build_dataset(folder, "train", resolution=64, masks=True).coco  # noqa: B018 (the COCO index is built in memory)
    check_dataset(folder, stage=2)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
