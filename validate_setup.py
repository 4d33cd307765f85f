"""Check the environment and lint a COCO or YOLO dataset folder before training.

    python validate_setup.py --dataset_dir dataset --stage 1
    python validate_setup.py --dataset_dir dataset --stage 2 --skip_env   # masks required on every object

The command is :func:`rfdetr.cli.validate.main`; ``--help`` lists every flag.
"""

import sys

from rfdetr.cli.validate import main as main

if __name__ == "__main__":
    sys.exit(main())
