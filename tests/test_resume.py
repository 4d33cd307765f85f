"""``--resume RUN_DIR`` alone continues a run exactly: stage 1 and stage 2, interrupted after an epoch.

The interruption is a KeyboardInterrupt (Ctrl-C) raised right after the epoch's ``checkpoint.pth``
was written; the script exits 130 with the command that continues the run. The resumed run must end with the
same epochs, the same ``log.txt`` metrics and the same early-stopping epoch as the run that was never stopped.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

import train_detector_stage1
import train_seg_stage2
from rfdetr.checkpoints.files import read_checkpoint
from rfdetr.datasets import make_synthetic_coco
from rfdetr.training import trainer as trainer_module

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
# Patience 1: the first epoch without a better AP stops the run, so the stopping epoch depends on
# the early-stopping state that checkpoint.pth carries across the interruption.
TINY = ["--resolution", "64", "--epochs", "4", "--batch", "2", "--accum", "1", "--multi_scale", "0", "--workers", "0",
        "--device", "cpu", "--tensorboard", "0", "--early_stopping", "1", "--patience", "1", "--run_test", "0"]
TINY_MODEL = ["--num_queries", "20", "--group_detr", "1", "--gradient_checkpointing", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("resume") / "dataset", seed=7, num_train=4, num_valid=1,
                               num_test=0, image_size=(64, 64))


def interrupt_after(monkeypatch, epochs: int) -> None:
    """Stop the process (KeyboardInterrupt) once ``checkpoint.pth`` has been written ``epochs`` times."""
    real = trainer_module.save_checkpoint
    written = []

    def save(checkpoint, path):
        result = real(checkpoint, path)
        if Path(path).name == "checkpoint.pth":
            written.append(path)
            if len(written) == epochs:
                raise KeyboardInterrupt
        return result

    monkeypatch.setattr(trainer_module, "save_checkpoint", save)


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.txt").read_text().splitlines()]


def assert_same_logs(resumed: list[dict], uninterrupted: list[dict]) -> None:
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in uninterrupted]
    for mine, theirs in zip(resumed, uninterrupted):
        for key in ("train_loss", "valid_loss", "valid_bbox_AP", "valid_segm_AP", "best_regular"):
            if key in theirs:
                assert math.isclose(mine[key], theirs[key], rel_tol=1e-4, abs_tol=1e-6), (key, mine, theirs)


def whole_and_resumed(script, common: list[str], tmp_path: Path, monkeypatch, capsys) -> tuple[Path, Path, str]:
    """(folder of the uninterrupted run, folder of the run stopped after epoch 0 and resumed, resume output)."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert script.main([*common, "--output_dir", str(whole)]) == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        assert script.main([*common, "--output_dir", str(stopped)]) == 130
    assert f"{script.__name__}.py --resume {stopped}" in capsys.readouterr().err
    assert script.main(["--resume", str(stopped)]) == 0  # nothing but the run folder
    return whole, stopped, capsys.readouterr().out


@pytest.mark.slow  # trains stage 1 twice (whole and resumed)
def test_stage1_resumes_from_the_run_folder_alone(data, tmp_path, monkeypatch, capsys):
    common = ["--size", "nano", "--pretrain_weights", "none", "--dataset_dir", str(data), *TINY, *TINY_MODEL]
    whole, stopped, out = whole_and_resumed(train_detector_stage1, common, tmp_path, monkeypatch, capsys)
    # The default size is small: the run folder alone must bring back nano and every setting.
    assert re.search(r"^size:\s+nano$", out, re.M) and re.search(r"^resolution:\s+64$", out, re.M)
    assert_same_logs(log(stopped), log(whole))
    assert len(log(whole)) < 4  # early stopping ended both runs at the same epoch, before --epochs
    final = read_checkpoint(stopped / "checkpoint.pth")
    assert final["run"]["model"]["size"] == "nano" and final["run"]["train"]["epochs"] == 4


@pytest.mark.slow  # trains stage 1, then stage 2 twice
def test_stage2_resumes_from_the_run_folder_alone(data, tmp_path, monkeypatch, capsys):
    detector = tmp_path / "detector"
    assert train_detector_stage1.main(["--size", "nano", "--pretrain_weights", "none", "--dataset_dir", str(data),
                                       "--output_dir", str(detector), *TINY, "--epochs", "1", *TINY_MODEL]) == 0
    common = ["--stage1_run", str(detector), "--dataset_dir", str(data), *TINY]
    whole, stopped, out = whole_and_resumed(train_seg_stage2, common, tmp_path, monkeypatch, capsys)
    assert re.search(r"^mask head:\s+light$", out, re.M)
    assert_same_logs(log(stopped), log(whole))
    assert read_checkpoint(stopped / "checkpoint_best_total.pth")["masks"]["mask_head"] == "light"


def test_model_flags_cannot_change_on_resume(data, tmp_path, capsys):
    assert train_detector_stage1.main(["--resume", str(tmp_path), "--num_queries", "10"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "checkpoint.pth").touch()
    assert train_detector_stage1.main(["--resume", str(tmp_path), "--size", "base"]) == 2
    assert "--size cannot change on --resume" in capsys.readouterr().err
