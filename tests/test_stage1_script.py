"""train_detector_stage1.py: flags -> TrainConfig, default run folder, banner, errors, fast --help."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

import train_detector_stage1
from rfdetr.cli.common import str2bool, train_overrides
from rfdetr.cli.training import stage1_parser
from rfdetr.datasets import make_synthetic_coco

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]


def test_flags_map_onto_train_config_fields_only_when_given():
    args = stage1_parser().parse_args(["--size", "nano", "--batch", "2", "--accum", "3", "--multi_scale", "0",
                                             "--expanded_scales", "--no_amp", "--patience", "4"])
    assert train_overrides(args) == {"batch_size": 2, "grad_accum_steps": 3, "multi_scale": False,
                                     "expanded_scales": True, "amp": False, "early_stopping_patience": 4}
    assert str2bool("TRUE") and not str2bool("0")
    with pytest.raises(SystemExit):
        stage1_parser().parse_args(["--multi_scale", "maybe"])


@pytest.mark.slow  # training runs of the stage-1 script
def test_script_trains_into_the_next_free_run_folder(tmp_path, monkeypatch, capsys, caplog):
    data = make_synthetic_coco(tmp_path / "dataset", seed=1, num_train=4, num_valid=2, num_test=0,
                               image_size=(96, 96))
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    (tmp_path / "runs" / "detector_nano_128_1").mkdir(parents=True)
    code = train_detector_stage1.main([
        "--size", "nano", "--pretrain_weights", "none", "--dataset_dir", str(data), "--epochs", "2", "--batch", "2",
        "--accum", "1", "--resolution", "128", "--num_queries", "20", "--group_detr", "1", "--multi_scale", "0",
        "--workers", "0", "--device", "cpu", "--tensorboard", "0"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out
    # Not a terminal: no progress-bar frames, one summary line per epoch.
    assert "\r" not in captured.err and "it/s" not in captured.err and "step/s" not in captured.err
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [m.split(" (")[0] for m in summaries] == ["epoch 0/1", "epoch 1/1"], summaries
    assert all("bbox AP50" in m and "train loss" in m for m in summaries)
    run = tmp_path / "runs" / "detector_nano_128_2"
    assert "RT-DETR-Seg stage 1" in out and "effective batch" in out and str(Path("runs/detector_nano_128_2")) in out
    assert (run / "checkpoint_best_total.pth").is_file() and (run / "log.txt").is_file()


def test_script_reports_a_missing_dataset(tmp_path, capsys):
    code = train_detector_stage1.main(["--size", "nano", "--pretrain_weights", "none", "--dataset_dir",
                                       str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "run")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_help_is_fast_and_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, train_detector_stage1 as s\n"
                           "try:\n    s.main(['--help'])\nexcept SystemExit:\n    pass\n"
                           "print('torch' in sys.modules)"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip().endswith("False") and "--pretrain_weights" in done.stdout
