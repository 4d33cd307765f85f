"""Stage 1: fine-tune the RF-DETR detector on a COCO-format dataset, starting from the COCO checkpoint.

    python train_detector_stage1.py --size nano --dataset_dir dataset --epochs 50 --batch 4 --accum 4
    python train_detector_stage1.py --size nano --pretrain_weights none --device cpu   # random init, offline
    torchrun --nproc_per_node=2 train_detector_stage1.py --size small --batch 2     # several GPUs
    python train_detector_stage1.py --resume runs/detector_nano_384_1                # continue exactly

The command is :func:`rfdetr.cli.training.stage1_main`; ``--help`` lists every flag.
"""

import sys

from rfdetr.cli.training import stage1_main as main

if __name__ == "__main__":
    sys.exit(main())
