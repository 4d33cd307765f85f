"""The training loop under torchrun (2 processes, gloo on CPU) and data loading with spawned workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rfdetr.datasets import build_dataset, collate_fn, make_synthetic_coco

# Both tests start processes: torchrun training ranks, spawned data-loader workers.
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("data"), seed=2, num_train=8, num_valid=2, num_test=0,
                               image_size=(96, 96))


def test_torchrun_two_processes_train_in_sync(dataset, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(ROOT / "tests" / "ddp_worker.py"), str(dataset), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    digests = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert digests[0][0] == "2" and digests[0] == digests[1]  # both ranks ran, replicas stayed identical
    assert (tmp_path / "checkpoint.pth").is_file() and (tmp_path / "log.txt").is_file()
    assert len((tmp_path / "log.txt").read_text().splitlines()) == 1  # rank 0 alone writes


def test_data_loader_works_with_spawned_workers(dataset):
    train = build_dataset(dataset, "train", resolution=128, train=True, masks=True)
    loader = torch.utils.data.DataLoader(train, batch_size=2, num_workers=2, collate_fn=collate_fn,
                                         multiprocessing_context="spawn")
    samples, targets = next(iter(loader))
    assert samples.tensors.shape[:2] == (2, 3) and len(targets) == 2
    assert all(t["masks"].shape[0] == len(t["boxes"]) for t in targets)
