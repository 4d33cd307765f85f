"""The ``rfdetr`` command: sub-commands, predict on a folder, and train = the stage-1 script."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

import train_detector_stage1
from rfdetr import RFDETRNano
from rfdetr.checkpoints.files import make_checkpoint
from rfdetr.cli.main import main
from rfdetr.datasets import make_synthetic_coco
from rfdetr.datasets.coco import dataset_classes

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_help_lists_every_sub_command_with_an_example(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("predict", "train", "validate", "export", "shrink", "strip"):
        assert f"\n  {name} " in out
    assert "example: rfdetr predict" in out
    for command in (["predict"], ["export"], ["validate"], ["shrink"], ["strip"], ["train", "detector"],
                    ["train", "masks"], ["train", "single-stage"]):
        with pytest.raises(SystemExit) as stopped:
            main([*command, "--help"])
        assert stopped.value.code == 0
        help_lines = capsys.readouterr().out.splitlines()
        example = " ".join(["rfdetr", *command]) + " "
        assert any(line.strip().startswith(example) for line in help_lines), command  # an example, not usage
        assert not any(line.strip().startswith("python ") for line in help_lines)
    assert main(["train", "--help"]) == 0 and "rfdetr train detector --size" in capsys.readouterr().out
    assert main(["fly"]) == 2 and "unknown sub-command 'fly'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("cli") / "data", seed=4, num_train=4, num_valid=3, num_test=0,
                               image_size=(96, 128))


def test_predict_on_a_folder_writes_annotated_images_and_coco_results(small_set, tmp_path, capsys):
    classes = dataset_classes(small_set)
    torch.manual_seed(0)
    model = RFDETRNano(pretrain_weights=None, class_names=classes.names, device="cpu", resolution=128)
    weights = tmp_path / "model.pth"
    torch.save(make_checkpoint(model.model, model.config, model.classes), weights)
    valid = small_set / "valid"
    extra = tmp_path / "loose.png"  # an image outside the dataset gets an id of its own
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(extra)
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(valid), str(extra), "--out", str(out), "--threshold", "0.0"]) == 0
    inputs = sorted(valid.glob("*.jpg")) + [extra]
    written = sorted(out.glob("*.jpg"))
    assert len(written) == len(inputs)
    for source in inputs:
        with Image.open(out / f"{source.stem}.jpg") as annotated, Image.open(source) as original:
            assert annotated.size == original.size
    truth = COCO(str(valid / "_annotations.coco.json"))
    results = json.loads((out / "predictions.json").read_text())
    in_dataset = [r for r in results if r["image_id"] in truth.getImgIds()]
    assert len(in_dataset) == 3 * model.config.num_select  # threshold 0: every selected query
    loaded = truth.loadRes(in_dataset)
    assert len(loaded.getAnnIds()) == len(in_dataset)
    index = json.loads((out / "predictions_images.json").read_text())
    loose = [entry["id"] for entry in index if entry["file_name"] == str(extra)]
    assert loose and loose[0] not in truth.getImgIds()


def test_predict_names_a_missing_source(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "model.pth"), str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such image" in capsys.readouterr().err


@pytest.mark.slow  # two training runs through the CLI
def test_train_detector_is_the_stage1_script(small_set, tmp_path):
    flags = ["--size", "nano", "--pretrain_weights", "none", "--dataset_dir", str(small_set), "--epochs", "1",
             "--batch", "2", "--accum", "1", "--resolution", "128", "--num_queries", "20", "--group_detr", "1",
             "--multi_scale", "0", "--workers", "0", "--device", "cpu", "--tensorboard", "0", "--seed", "3"]
    assert main(["train", "detector", *flags, "--output_dir", str(tmp_path / "a")]) == 0
    assert train_detector_stage1.main([*flags, "--output_dir", str(tmp_path / "b")]) == 0
    files = lambda run: sorted(p.name for p in run.iterdir())  # noqa: E731
    assert files(tmp_path / "a") == files(tmp_path / "b")
    logs = [json.loads((tmp_path / run / "log.txt").read_text().splitlines()[0]) for run in ("a", "b")]
    assert logs[0]["train_loss"] == pytest.approx(logs[1]["train_loss"], rel=1e-5)
    assert logs[0]["valid_bbox_AP"] == pytest.approx(logs[1]["valid_bbox_AP"], abs=1e-6)


@pytest.mark.slow  # builds three trainers
@pytest.mark.parametrize(("front_end", "processes", "hint"), [
    ("rfdetr", 1, "rfdetr train detector --resume {run}"),
    ("rfdetr", 2, "torchrun --nproc_per_node=2 -m rfdetr.cli.main train detector --resume {run}"),
    ("script", 1, "python train_detector_stage1.py --resume {run}"),
])
def test_ctrl_c_names_the_command_that_continues_the_run(front_end, processes, hint, small_set, tmp_path,
                                                         monkeypatch, capsys):
    from rfdetr.training import distributed
    from rfdetr.training.trainer import Trainer

    def interrupted_fit(self):  # Ctrl-C in the middle of the run, on a run of `processes` processes
        monkeypatch.setattr(distributed, "world_size", lambda: processes)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted_fit)
    run = tmp_path / "run"
    flags = ["--size", "nano", "--pretrain_weights", "none", "--dataset_dir", str(small_set), "--resolution", "128",
             "--num_queries", "20", "--group_detr", "1", "--device", "cpu", "--tensorboard", "0",
             "--output_dir", str(run)]
    code = main(["train", "detector", *flags]) if front_end == "rfdetr" else train_detector_stage1.main(flags)
    assert code == 130
    assert f"continue with: {hint.format(run=run)}\n" in capsys.readouterr().err


@pytest.mark.slow  # predicts, then exports fp32 and int8 ONNX models
def test_mask_checkpoint_predicts_rle_masks_and_exports_with_int8(small_set, tmp_path):
    classes = dataset_classes(small_set)
    torch.manual_seed(0)
    model = RFDETRNano(pretrain_weights=None, masks=True, class_names=classes.names, device="cpu", resolution=128,
                       num_queries=20)
    weights = tmp_path / "masks.pth"
    torch.save(make_checkpoint(model.model, model.config, model.classes), weights)
    valid = small_set / "valid"
    assert main(["predict", str(weights), str(valid), "--out", str(tmp_path / "pth"), "--threshold", "0.0"]) == 0
    truth = COCO(str(valid / "_annotations.coco.json"))
    results = json.loads((tmp_path / "pth" / "predictions.json").read_text())
    per_image = [sum(r["image_id"] == i for r in results) for i in truth.getImgIds()]
    assert per_image[0] > 0 and per_image == [per_image[0]] * 3  # threshold 0: every selected query
    height, width = 96, 128
    assert all(r["segmentation"]["size"] == [height, width] for r in results)
    loaded = truth.loadRes(results)  # pycocotools decodes every RLE
    areas = [loaded.annToMask(loaded.anns[i]).sum() for i in loaded.getAnnIds()]
    assert max(areas) > 0

    export_dir = tmp_path / "export"
    assert main(["export", str(weights), "--out", str(export_dir), "--quantize", "int8"]) == 0
    assert sorted(p.name for p in export_dir.glob("*.onnx")) == ["inference_model.onnx", "inference_model_int8.onnx"]
    for name in ("inference_model.onnx", "inference_model_int8.onnx"):
        out = tmp_path / name
        assert main(["predict", str(export_dir / name), str(valid), "--out", str(out), "--threshold", "0.0"]) == 0
        onnx_results = json.loads((out / "predictions.json").read_text())
        assert len(onnx_results) == len(results) and all("segmentation" in r for r in onnx_results)
    assert main(["export", str(tmp_path / "missing.pth")]) == 2
