"""Remove every class-head tensor from a checkpoint, so that it loads into a model with any class count.

    python strip_class_heads.py rf-detr-nano.pth nano-no-heads.pth

The command is :func:`rfdetr.cli.strip.strip_main`; ``--help`` lists every flag.
"""

import sys

from rfdetr.cli.strip import strip_main as main

if __name__ == "__main__":
    sys.exit(main())
