"""train_seg_stage2.py and train_seg_single_stage.py on a tiny synthetic dataset (CPU, 128 px, 20 queries).

Stage 2 must train the mask head alone on the stage-1 detector, loaded strictly and never changed;
single stage must load the COCO-format checkpoint into the detector and then train everything.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tensorboard_tags

import train_detector_stage1
import train_seg_single_stage
import train_seg_stage2
from rfdetr.checkpoints.files import is_class_head_key, read_checkpoint
from rfdetr.config import TrainConfig
from rfdetr.datasets import make_synthetic_coco
from rfdetr.training.stages import STAGE1_CHECKPOINT_NAMES, find_stage1_checkpoint, start_run

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]
# One epoch = five optimizer steps of two 128 px images.
TINY_RUN = ["--resolution", "128", "--epochs", "1", "--batch", "2", "--accum", "1", "--multi_scale", "0",
            "--workers", "0", "--device", "cpu", "--tensorboard", "0"]
# No gradient checkpointing: faster steps on CPU.
TINY_MODEL = ["--num_queries", "20", "--group_detr", "1", "--gradient_checkpointing", "0"]
# The one parameter that never trains: DINOv2's mask token (a ViT-width vector; no masked patches here).
UNUSED_MASK_TOKEN = "detr.backbone.0.encoder.encoder.embeddings.mask_token"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("seg") / "dataset", seed=3, num_train=4, num_valid=2,
                               num_test=0, image_size=(96, 96))


@pytest.fixture(scope="module")
def stage1_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("stage1") / "detector"
    code = train_detector_stage1.main(["--size", "nano", "--pretrain_weights", "none", "--dataset_dir", str(data),
                                       "--output_dir", str(run), *TINY_RUN, *TINY_MODEL])
    assert code == 0
    return run


def detector_part(state: dict) -> dict:
    return {key[len("detr."):]: value for key, value in state.items() if key.startswith("detr.")}


@pytest.mark.slow  # stage1_run, then a stage-2 run
def test_stage2_trains_the_mask_head_on_the_unchanged_detector(stage1_run, data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = train_seg_stage2.main(["--stage1_run", str(stage1_run), "--dataset_dir", str(data), *TINY_RUN,
                                  "--tensorboard", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    run = tmp_path / "runs" / "segmentation_nano_128_1"
    # tensorboard --logdir RUN_DIR/tb shows the mask and Dice losses too.
    assert {"train/loss_mask", "train/loss_dice", "val/loss_mask", "val/segm_AP"} <= tensorboard_tags(run / "tb")
    assert "RT-DETR-Seg stage 2" in out and str(Path("runs/segmentation_nano_128_1")) in out
    # The seed's sanity check: frozen and trainable counts as tensors and as elements.
    assert "0 tensors (0 elements) trainable" in out
    summary = json.loads((run / "stage2_config.json").read_text())
    assert summary["stage"] == "masks" and summary["size"] == "nano" and summary["resolution"] == 128
    assert summary["started_from"]["stage-1 checkpoint"] == str(stage1_run / "checkpoint_best_total.pth")
    assert summary["classes"] == ["circle", "square", "triangle"] and summary["mask_head"] == "light"
    counts = summary["parameter_counts"]
    assert counts["detector_trainable"] == 0 and counts["detector_frozen"] > 0 and counts["mask_head_trainable"] > 0
    assert counts["detector_trainable_tensors"] == 0 < counts["detector_frozen_tensors"] < counts["detector_frozen"]
    assert 0 < counts["mask_head_trainable_tensors"] < counts["mask_head_trainable"]
    assert summary["train_config"]["epochs"] == 1 and summary["lr"] == 1e-4

    best = read_checkpoint(run / "checkpoint_best_total.pth")
    assert best["masks"]["mask_head"] == "light"
    assert {key.split(".")[0] for key in best["model"]} >= {"detr", "mask_head"}
    assert "masks" in json.loads((run / "results.json").read_text())
    assert "valid_segm_AP" in json.loads((run / "log.txt").read_text().splitlines()[-1])

    stage1 = read_checkpoint(stage1_run / "checkpoint_best_total.pth")["model"]
    detector = detector_part(read_checkpoint(run / "checkpoint.pth")["model"])
    assert detector.keys() == stage1.keys()
    changed = [key for key in stage1 if not torch.equal(detector[key], stage1[key])]
    assert changed == []

    # --resume continues the run from its folder alone (model, stage and settings stored); --epochs overrides.
    assert train_seg_stage2.main(["--resume", str(run), "--epochs", "2"]) == 0
    assert "resume: epochs 1 -> 2" in capsys.readouterr().out
    assert [json.loads(line)["epoch"] for line in (run / "log.txt").read_text().splitlines()] == [0, 1]
    assert json.loads((run / "stage2_config.json").read_text()) == summary  # the record of how it started


# Ways an instance can lack a usable mask; each keeps its box.
NO_MASK = (lambda a: a.pop("segmentation"),
           lambda a: a.update(segmentation=[]),
           lambda a: a.update(segmentation=[[10, 10, 30, 30]]),  # two points: would read as a box
           lambda a: a.update(segmentation=[[10, 10, 20, 20, 30, 30]]),  # three points on a line: no area
           lambda a: a.update(segmentation={"size": [96, 96], "counts": "not an RLE"}))


def without_some_masks(source: Path, target: Path) -> Path:
    """A copy of the dataset in which every other instance of each split has no usable mask."""
    shutil.copytree(source, target)
    for split in ("train", "valid"):
        path = target / split / "_annotations.coco.json"
        document = json.loads(path.read_text())
        for number, annotation in enumerate(document["annotations"][::2]):
            NO_MASK[number % len(NO_MASK)](annotation)
        path.write_text(json.dumps(document))
    return target


@pytest.mark.slow  # stage1_run, then a stage-2 run
def test_stage2_with_box_only_instances_trains_and_evaluates_masks(stage1_run, data, tmp_path, capsys):
    partly = without_some_masks(data, tmp_path / "partly")
    run = tmp_path / "run"
    code = train_seg_stage2.main(["--stage1_run", str(stage1_run), "--dataset_dir", str(partly),
                                  "--output_dir", str(run), *TINY_RUN])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    record = json.loads((run / "log.txt").read_text().splitlines()[-1])
    assert 0.0 <= record["valid_segm_AP"] <= 1.0 and 0.0 <= record["valid_bbox_AP"] <= 1.0


@pytest.mark.slow  # stage1_run: a training run
def test_stage2_refuses_a_detector_with_other_classes(stage1_run, tmp_path, capsys):
    other = make_synthetic_coco(tmp_path / "other", seed=4, num_train=2, num_valid=1, num_test=0,
                                image_size=(64, 64), classes=("hexagon", "star"))
    code = train_seg_stage2.main(["--checkpoint", str(stage1_run / "checkpoint_best_total.pth"),
                                  "--dataset_dir", str(other), "--output_dir", str(tmp_path / "run"), *TINY_RUN])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: ") and "shrink_head.py" in error and "train_detector_stage1.py" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # stage1_run: a training run
def test_stage2_needs_masks_in_the_dataset(stage1_run, data, tmp_path, capsys):
    boxes_only = make_synthetic_coco(tmp_path / "boxes", seed=3, num_train=2, num_valid=1, num_test=0,
                                     image_size=(64, 64))
    annotation_file = boxes_only / "train" / "_annotations.coco.json"
    annotations = json.loads(annotation_file.read_text())
    for annotation in annotations["annotations"]:
        del annotation["segmentation"]
    annotation_file.write_text(json.dumps(annotations))
    code = train_seg_stage2.main(["--stage1_run", str(stage1_run), "--dataset_dir", str(boxes_only),
                                  "--output_dir", str(tmp_path / "run"), *TINY_RUN])
    error = capsys.readouterr().err
    assert code == 2 and "no segmentation" in error and "validate_setup.py" in error and "--stage 2" in error


def test_stage2_names_the_missing_detector(data, tmp_path, capsys):
    assert train_seg_stage2.main(["--dataset_dir", str(data)]) == 2
    assert "--stage1_run" in capsys.readouterr().err
    assert train_seg_stage2.main(["--stage1_run", str(tmp_path / "nothing"), "--dataset_dir", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train_seg_stage2.main(["--stage1_run", str(tmp_path), "--dataset_dir", str(data)]) == 2
    assert "checkpoint_best_total.pth" in capsys.readouterr().err
    assert train_seg_stage2.main(["--checkpoint", str(tmp_path / "x.pth"), "--dataset_dir", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train_seg_stage2.main(["--stage1_run", str(tmp_path), "--num_queries", "20"]) == 2
    assert "do not apply to stage 2" in capsys.readouterr().err


@pytest.mark.slow  # stage1_run: a training run
def test_stage2_needs_the_size_of_a_bare_state_dict(stage1_run, data, tmp_path, capsys):
    bare = tmp_path / "weights.pth"
    torch.save(read_checkpoint(stage1_run / "checkpoint_best_total.pth")["model"], bare)
    assert train_seg_stage2.main(["--checkpoint", str(bare), "--dataset_dir", str(data)]) == 2
    error = capsys.readouterr().err
    assert "does not say which model size" in error and "--size nano on the command line" in error


def test_stage1_checkpoint_search_order(tmp_path):
    for name in reversed(STAGE1_CHECKPOINT_NAMES):
        (tmp_path / name).touch()
        assert find_stage1_checkpoint(tmp_path) == tmp_path / name


# Fewer query groups than the file (13): the query tables are cut and the two-stage heads of the
# missing groups are left out.
@pytest.mark.parametrize("group_detr", [13, 1])
def test_single_stage_detector_starts_from_the_checkpoint(upstream_nano_file, data, tmp_path,
                                                          group_detr):
    config = TrainConfig(dataset_dir=str(data), output_dir=str(tmp_path / "run"), resolution=128, device="cpu",
                         num_workers=0, tensorboard=False)
    trainer = start_run("joint", "nano", config, weights=upstream_nano_file,
                        model_overrides={"num_queries": 20, "group_detr": group_detr})
    state = read_checkpoint(upstream_nano_file)["model"]
    detector = trainer.model.detr
    assert detector.class_embed.out_features == 4 and not trainer.model.freeze_detr
    frozen = [name for name, parameter in trainer.model.named_parameters() if not parameter.requires_grad]
    assert frozen == [UNUSED_MASK_TOKEN]
    for key, value in detector.state_dict().items():
        if not is_class_head_key(key):  # query tables: the first 20 x group_detr rows of the file's 300 x 13
            assert torch.equal(value, state[key][: value.shape[0]]), key


@pytest.mark.slow  # stage1_run: a training run
def test_single_stage_from_a_stage1_detector_keeps_its_class_heads(stage1_run, data, tmp_path):
    config = TrainConfig(dataset_dir=str(data), output_dir=str(tmp_path / "run"), device="cpu", num_workers=0)
    trainer = start_run("joint", "nano", config, weights=stage1_run / "checkpoint_best_total.pth")
    stage1 = read_checkpoint(stage1_run / "checkpoint_best_total.pth")["model"]
    detector = trainer.model.detr.state_dict()
    assert detector.keys() == stage1.keys()  # geometry (20 queries, 1 group) from the file's config
    assert all(torch.equal(detector[key], stage1[key]) for key in stage1)


@pytest.mark.slow  # a single-stage training run
def test_single_stage_script_trains_detector_and_mask_head(upstream_nano_file, data, tmp_path, capsys):
    run = tmp_path / "single"
    # All 13 query groups (see FEWER_GROUPS_UNSUPPORTED), so one image per step to stay quick.
    code = train_seg_single_stage.main(["--pretrain_weights", str(upstream_nano_file), "--dataset_dir", str(data),
                                        "--output_dir", str(run), "--num_queries", "20", "--gradient_checkpointing",
                                        "0", *TINY_RUN, "--batch", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "RT-DETR-Seg single stage" in out
    summary = json.loads((run / "single_stage_config.json").read_text())
    assert summary["started_from"]["pretrained"] == str(upstream_nano_file) and summary["mask_head"] == "light"
    counts = summary["parameter_counts"]
    assert counts["detector_frozen"] == 384  # UNUSED_MASK_TOKEN
    assert counts["detector_trainable"] > 0 and counts["mask_head_trainable"] > 0
    checkpoint = read_checkpoint(run / "checkpoint.pth")
    assert checkpoint["masks"] == {"mask_head": "light", "frozen_detector": False, "mask_loss_coef": 1.0,
                                   "dice_loss_coef": 1.0}
    assert checkpoint["run"]["stage"] == "joint"
    start = read_checkpoint(upstream_nano_file)["model"]
    trained = detector_part(checkpoint["model"])
    for key in ("backbone.0.encoder.encoder.layernorm.weight", "transformer.decoder.layers.0.linear1.weight",
                "bbox_embed.layers.0.weight"):
        assert not torch.equal(trained[key], start[key]), key


@pytest.mark.parametrize("script", ["train_seg_stage2", "train_seg_single_stage"])
def test_help_is_fast_and_imports_no_torch(script):
    done = subprocess.run([sys.executable, "-c", f"import sys, {script} as s\n"
                           "try:\n    s.main(['--help'])\nexcept SystemExit:\n    pass\n"
                           "print('torch' in sys.modules)"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip().endswith("False") and "--mask_head" in done.stdout
