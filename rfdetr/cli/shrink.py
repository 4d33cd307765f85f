"""``shrink_head.py`` / ``rfdetr shrink``: keep only some classes of a checkpoint's class heads."""

from __future__ import annotations

import argparse
import sys

from rfdetr.cli.common import command_doc, say_dropped_copies

SHRINK_DOC = """Keep only some classes of a checkpoint's class heads (e.g. a COCO checkpoint -> person, dog).

    {prog} --in_ckpt rf-detr-nano.pth --out_ckpt nano-person-dog.pth --keep person dog

Names are looked up in the checkpoint's class table (the COCO names for the published 91-row
checkpoints). Every class head (the final one and the 13 two-stage heads) is sliced the same way,
a spare row is kept, and the new class table is stored. The result is verified by reloading it.
"""


def shrink_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=command_doc(SHRINK_DOC, prog, "shrink_head.py"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in_ckpt", required=True, help="checkpoint to read (.pth)")
    parser.add_argument("--out_ckpt", required=True, help="checkpoint to write (.pth); written atomically")
    parser.add_argument("--keep", required=True, nargs="+", metavar="NAME", help="class names to keep, in order")
    args = parser.parse_args(argv)

    from rfdetr.checkpoints.durable import save_checkpoint
    from rfdetr.checkpoints.files import checkpoint_class_table, read_checkpoint
    from rfdetr.checkpoints.surgery import head_rows, shrink_class_heads

    dropped: list[str] = []
    try:
        checkpoint = read_checkpoint(args.in_ckpt, dropped=dropped)
        shrunk = shrink_class_heads(checkpoint, args.keep)
        table = checkpoint_class_table(shrunk, args.out_ckpt)
        if head_rows(shrunk) != len(args.keep) + 1 or table.names != list(args.keep):  # checked before writing
            print(f"error: shrinking gave {head_rows(shrunk)} rows, classes {table.names}; nothing written",
                  file=sys.stderr)
            return 1
        save_checkpoint(shrunk, args.out_ckpt)
        reloaded = read_checkpoint(args.out_ckpt)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"class head: {head_rows(checkpoint)} -> {head_rows(reloaded)} rows "
          f"({len(args.keep)} classes + 1 spare); classes: {', '.join(table.names)}")
    say_dropped_copies(dropped)
    print(f"wrote {args.out_ckpt} (verified by reloading)")
    return 0
