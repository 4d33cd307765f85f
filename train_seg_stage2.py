"""Stage 2: train a mask head on the frozen detector of a stage-1 run.

    python train_seg_stage2.py --stage1_run runs/detector_nano_384_1 --epochs 50
    python train_seg_stage2.py --size small --checkpoint detector.pth --batch 2 --accum 2
    python train_seg_stage2.py --resume runs/segmentation_nano_384_1                  # continue exactly

The command is :func:`rfdetr.cli.training.stage2_main`; ``--help`` lists every flag.
"""

import sys

from rfdetr.cli.training import stage2_main as main

if __name__ == "__main__":
    sys.exit(main())
