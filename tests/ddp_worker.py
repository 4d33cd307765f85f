"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Trains the tiny test geometry for one short epoch; every rank writes a digest of its final weights
(``rank<r>.txt``) so the test can check that DDP kept the replicas identical.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from rfdetr.config import RunConfig, TrainConfig, model_config
from rfdetr.datasets.coco import dataset_classes
from rfdetr.models import build_detector
from rfdetr.training import distributed as dist
from rfdetr.training.engine import unwrap
from rfdetr.training.trainer import Trainer


def main(dataset_dir: str, output_dir: str) -> None:
    torch.set_num_threads(1)
    classes = dataset_classes(dataset_dir)
    config = model_config("nano", num_classes=classes.num_rows - 1, num_queries=50, group_detr=2)
    torch.manual_seed(0)
    model = build_detector(config)
    train = TrainConfig(dataset_dir=dataset_dir, output_dir=output_dir, epochs=1, batch_size=1, grad_accum_steps=2,
                        resolution=256, multi_scale=False, num_workers=0, progress="none", device="cpu",
                        use_ema=False, run_test=False)
    trainer = Trainer(model, RunConfig(stage="detector", model=config, train=train), classes)
    trainer.fit()
    digest = hashlib.sha256()
    for value in unwrap(trainer.model).state_dict().values():
        digest.update(value.detach().cpu().numpy().tobytes())
    Path(output_dir, f"rank{dist.rank()}.txt").write_text(f"{dist.world_size()} {digest.hexdigest()}\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
