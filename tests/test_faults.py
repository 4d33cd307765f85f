"""Runs that are killed survive: real training processes, killed with SIGKILL at the worst moments.

Each test starts ``train_detector_stage1.py`` as a subprocess on a tiny synthetic dataset, kills
it (during an epoch; while ``checkpoint.pth`` is being written; one rank of a ``torchrun`` run),
then checks that the run folder's ``checkpoint.pth`` loads, that ``--resume RUN_DIR`` finishes
the run, and that the finished run logs the same metrics as a run that was never killed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from pausing_writer import PAUSED

from rfdetr.checkpoints.durable import TEMPORARY_SUFFIX
from rfdetr.checkpoints.files import read_checkpoint
from rfdetr.datasets import make_synthetic_coco

pytestmark = pytest.mark.slow  # several short training processes
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "train_detector_stage1.py")
EPOCHS = 3
TINY = ["--size", "nano", "--pretrain_weights", "none", "--resolution", "64", "--epochs", str(EPOCHS),
        "--batch", "2", "--accum", "1", "--multi_scale", "0", "--workers", "0", "--device", "cpu",
        "--tensorboard", "0", "--early_stopping", "0", "--run_test", "0",
        "--num_queries", "20", "--group_detr", "1", "--gradient_checkpointing", "0"]
TIMEOUT = 300


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("faults") / "dataset", seed=11, num_train=6, num_valid=2,
                               num_test=0, image_size=(64, 64))


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> list[dict]:
    """log.txt of the run that nobody killed."""
    run = tmp_path_factory.mktemp("whole") / "run"
    finish([SCRIPT, *TINY, "--dataset_dir", str(data), "--output_dir", str(run)])
    return log(run)


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def finish(arguments: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *arguments], env=environment(), capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


class Watched:
    """A subprocess whose stderr is collected line by line (``wait_for`` a text to appear)."""

    def __init__(self, command: list[str], **env: str):
        self.process = subprocess.Popen(command, env=environment(**env), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, f"exited {self.process.returncode}: {''.join(self.lines)[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no handler, no cleanup, no flush
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.txt").read_text().splitlines()]


def wait_for_checkpoint(run: Path, epoch: int, process: subprocess.Popen) -> None:
    """Until ``run/checkpoint.pth`` holds ``epoch`` (polling reads of the file as it is replaced)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert process.poll() is None, f"the run ended ({process.returncode}) before epoch {epoch}'s checkpoint"
        assert time.monotonic() < deadline
        if (run / "checkpoint.pth").is_file() and read_checkpoint(run / "checkpoint.pth")["epoch"] >= epoch:
            return
        time.sleep(0.05)


def assert_same_logs(resumed: list[dict], whole: list[dict]) -> None:
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in whole] == list(range(EPOCHS))
    for mine, theirs in zip(resumed, whole):
        for key in ("train_loss", "valid_loss", "valid_bbox_AP", "valid_bbox_AP50"):
            assert math.isclose(mine[key], theirs[key], rel_tol=1e-4, abs_tol=1e-6), (key, mine, theirs)


def resume_and_compare(run: Path, uninterrupted: list[dict]) -> None:
    finish([SCRIPT, "--resume", str(run)])
    assert_same_logs(log(run), uninterrupted)
    assert not list(run.glob(f"*{TEMPORARY_SUFFIX}"))  # what the killed writer left is gone
    assert read_checkpoint(run / "checkpoint.pth")["epoch"] == EPOCHS - 1


def test_kill_during_an_epoch_loses_at_most_that_epoch(data, tmp_path, uninterrupted):
    run = tmp_path / "run"
    watched = Watched([sys.executable, SCRIPT, *TINY, "--dataset_dir", str(data), "--output_dir", str(run)])
    wait_for_checkpoint(run, 0, watched.process)  # epoch 0 is on disk; epoch 1 is training now
    watched.kill()
    kept = read_checkpoint(run / "checkpoint.pth")
    assert kept["epoch"] in (0, 1) and len(kept["trainer"]["history"]) == kept["epoch"] + 1
    resume_and_compare(run, uninterrupted)


def test_kill_while_checkpoint_is_written_keeps_the_previous_one(data, tmp_path, uninterrupted):
    run = tmp_path / "run"
    watched = Watched([sys.executable, str(ROOT / "tests" / "pausing_writer.py"), "1", SCRIPT, *TINY,
                       "--dataset_dir", str(data), "--output_dir", str(run)])
    watched.wait_for(PAUSED)  # epoch 1's data is in the temporary file
    watched.kill()
    assert len(list(run.glob(f"checkpoint.pth.*{TEMPORARY_SUFFIX}"))) == 1
    kept = read_checkpoint(run / "checkpoint.pth")
    assert kept["epoch"] == 0 and len(kept["trainer"]["history"]) == 1  # one epoch lost, no more
    resume_and_compare(run, uninterrupted)


def test_a_dead_rank_stops_the_torchrun_run_and_leaves_a_usable_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    torchrun = Watched([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", SCRIPT,
                        *TINY, "--dataset_dir", str(data), "--output_dir", str(run)], OMP_NUM_THREADS="1")
    wait_for_checkpoint(run, 0, torchrun.process)
    rank1 = next(p for p in psutil.Process(torchrun.process.pid).children(recursive=True)
                 if p.environ().get("RANK") == "1")
    killed_at = time.monotonic()
    os.kill(rank1.pid, signal.SIGKILL)
    code = torchrun.process.wait(timeout=120)
    stopped_after = time.monotonic() - killed_at
    torchrun.kill()
    output = "".join(torchrun.lines)
    assert code != 0, output[-3000:]
    assert stopped_after < 60, stopped_after  # the survivor does not wait for the dead rank
    assert "SIGKILL" in output, output[-3000:]  # torchrun's report names the rank that died and how
    # The surviving rank (stopped by torchrun's SIGTERM, or first by its broken connection) says how to continue.
    assert (f"the last checkpoint is intact; continue with: torchrun --nproc_per_node=2 "
            f"train_detector_stage1.py --resume {run}") in output, output[-3000:]
    kept = read_checkpoint(run / "checkpoint.pth")
    assert kept["epoch"] >= 0 and kept["run"]["stage"] == "detector"
    finish([SCRIPT, "--resume", str(run)])  # one process continues the run from its last checkpoint
    assert [r["epoch"] for r in log(run)] == list(range(EPOCHS))


def test_a_full_disk_stops_the_run_saying_how_much_space_it_needs(data, tmp_path, monkeypatch, capsys):
    import errno

    import torch

    import train_detector_stage1

    run = tmp_path / "run"
    real_save = torch.save

    def disk_full_at_epoch_1(obj, target, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 1 and "optimizer" in obj:  # epoch 1's checkpoint.pth
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_epoch_1)
    code = train_detector_stage1.main([*TINY, "--dataset_dir", str(data), "--output_dir", str(run)])
    error = capsys.readouterr().err
    assert code == 1 and "no space left on the device" in error and "MB" in error, error[-2000:]
    assert "the previous checkpoint.pth is intact" in error
    assert read_checkpoint(run / "checkpoint.pth")["epoch"] == 0
    assert not list(run.glob(f"*{TEMPORARY_SUFFIX}"))
