"""Remove every class-head tensor from a checkpoint, so that it loads into a model with any class count.

    python strip_class_heads.py rf-detr-nano.pth nano-no-heads.pth

Everything else (backbone, projector, decoder, box heads, queries) is kept; the model that loads
the result gets fresh class heads. Optimizer state and the class table are dropped.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("in_ckpt", help="checkpoint to read (.pth)")
    parser.add_argument("out_ckpt", help="checkpoint to write (.pth); written atomically")
    args = parser.parse_args(argv)

    from rfdetr.checkpoint import read_checkpoint, save_checkpoint
    from rfdetr.surgery import strip_class_heads

    try:
        checkpoint = read_checkpoint(args.in_ckpt)
        stripped = strip_class_heads(checkpoint)
        save_checkpoint(stripped, args.out_ckpt)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    removed = len(checkpoint["model"]) - len(stripped["model"])
    print(f"removed {removed} class-head tensors; kept {len(stripped['model'])}; wrote {args.out_ckpt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
