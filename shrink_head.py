"""Keep only some classes of a checkpoint's class heads (e.g. a COCO checkpoint -> person, dog).

    python shrink_head.py --in_ckpt rf-detr-nano.pth --out_ckpt nano-person-dog.pth --keep person dog

The command is :func:`rfdetr.cli.shrink.shrink_main`; ``--help`` lists every flag.
"""

import sys

from rfdetr.cli.shrink import shrink_main as main

if __name__ == "__main__":
    sys.exit(main())
