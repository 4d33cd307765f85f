"""Keep only some classes of a checkpoint's class heads (e.g. a COCO checkpoint -> person, dog).

    python shrink_head.py --in_ckpt rf-detr-nano.pth --out_ckpt nano-person-dog.pth --keep person dog

Names are looked up in the checkpoint's class table (the COCO names for the published 91-row
checkpoints). Every class head (the final one and the 13 two-stage heads) is sliced the same way,
a spare row is kept, and the new class table is stored. The result is verified by reloading it.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in_ckpt", required=True, help="checkpoint to read (.pth)")
    parser.add_argument("--out_ckpt", required=True, help="checkpoint to write (.pth); written atomically")
    parser.add_argument("--keep", required=True, nargs="+", metavar="NAME", help="class names to keep, in order")
    args = parser.parse_args(argv)

    from rfdetr.checkpoint import checkpoint_class_table, read_checkpoint, save_checkpoint
    from rfdetr.surgery import head_rows, shrink_class_heads

    try:
        checkpoint = read_checkpoint(args.in_ckpt)
        shrunk = shrink_class_heads(checkpoint, args.keep)
        save_checkpoint(shrunk, args.out_ckpt)
        reloaded = read_checkpoint(args.out_ckpt)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = checkpoint_class_table(reloaded)
    expected_rows = len(args.keep) + 1
    if head_rows(reloaded) != expected_rows or table.names != list(args.keep):
        print(f"error: verification failed: {head_rows(reloaded)} rows, classes {table.names}", file=sys.stderr)
        return 1
    print(f"class head: {head_rows(checkpoint)} -> {head_rows(reloaded)} rows "
          f"({len(args.keep)} classes + 1 spare); classes: {', '.join(table.names)}")
    print(f"wrote {args.out_ckpt} (verified by reloading)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
