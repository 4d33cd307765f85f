"""It learns: the nano geometry, randomly initialised, fits a small synthetic set (bbox AP50 >= 0.5).

Reduced for a CPU test: 128 px images, 20 queries in one group, 8 training images that are also
the validation images (the claim is "the whole training pipeline can fit data", not generalisation).
An untrained model scores ~0 on the same evaluation.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from rfdetr.config import TrainConfig, model_config
from rfdetr.datasets import make_synthetic_coco
from rfdetr.datasets.coco import dataset_classes
from rfdetr.models import build_detector
from rfdetr.training.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

EPOCHS = 40


def test_random_init_nano_fits_a_synthetic_set(tmp_path):
    data = make_synthetic_coco(tmp_path / "data", seed=0, num_train=8, num_valid=1, num_test=0, image_size=(128, 128),
                               classes=("square", "circle"), max_objects=2)
    shutil.rmtree(data / "valid")
    shutil.copytree(data / "train", data / "valid")
    classes = dataset_classes(data)
    config = model_config("nano", num_classes=classes.num_rows - 1, num_queries=20, group_detr=1)
    torch.manual_seed(0)
    train = TrainConfig(dataset_dir=str(data), output_dir=str(tmp_path / "run"), epochs=EPOCHS, batch_size=4,
                        grad_accum_steps=1, resolution=128, multi_scale=False, num_workers=0, lr=1e-3,
                        lr_encoder=1e-3, use_ema=False, run_test=False, tensorboard=False, progress_bar=False,
                        device="cpu")
    trainer = Trainer(build_detector(config), config, classes, train)
    untrained = trainer._evaluate(trainer.model, "valid")["metrics"]["bbox"]["ap50"]
    result = trainer.fit()
    best_ap50 = max(record["valid_bbox_AP50"] for record in result.history)
    assert untrained < 0.05
    assert best_ap50 >= 0.5, [round(r["valid_bbox_AP50"], 3) for r in result.history]
