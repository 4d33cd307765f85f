"""Single stage: train the detector and a mask head together, starting from the COCO checkpoint.

    python train_seg_single_stage.py --size nano --epochs 50 --batch 1 --accum 8
    python train_seg_single_stage.py --size nano --init_ckpt runs/detector_nano_384_1/checkpoint_best_total.pth
    python train_seg_single_stage.py --resume runs/seg_single_nano_384_1                 # continue exactly

The command is :func:`rfdetr.cli.training.single_stage_main`; ``--help`` lists every flag.
"""

import sys

from rfdetr.cli.training import single_stage_main as main

if __name__ == "__main__":
    sys.exit(main())
