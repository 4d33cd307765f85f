"""``strip_class_heads.py`` / ``rfdetr strip``: remove every class-head tensor from a checkpoint."""

from __future__ import annotations

import argparse
import sys

from rfdetr.cli.common import command_doc, say_dropped_copies

STRIP_DOC = """Remove every class-head tensor from a checkpoint, so that it loads into a model with any class count.

    {prog} rf-detr-nano.pth nano-no-heads.pth

Everything else (backbone, projector, decoder, box heads, queries) is kept; the model that loads
the result gets fresh class heads. Optimizer state and the class table are dropped.
"""


def strip_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=command_doc(STRIP_DOC, prog, "strip_class_heads.py"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("in_ckpt", help="checkpoint to read (.pth)")
    parser.add_argument("out_ckpt", help="checkpoint to write (.pth); written atomically")
    args = parser.parse_args(argv)

    from rfdetr.checkpoints.durable import save_checkpoint
    from rfdetr.checkpoints.files import read_checkpoint
    from rfdetr.checkpoints.surgery import strip_class_heads

    dropped: list[str] = []
    try:
        checkpoint = read_checkpoint(args.in_ckpt, dropped=dropped)
        stripped = strip_class_heads(checkpoint)
        save_checkpoint(stripped, args.out_ckpt)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    removed = len(checkpoint["model"]) - len(stripped["model"])
    say_dropped_copies(dropped)
    print(f"removed {removed} class-head tensors; kept {len(stripped['model'])}; wrote {args.out_ckpt}")
    return 0
