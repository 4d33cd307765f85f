"""Run a training script with its write of one checkpoint paused midway: the fault the tests inject.

    python tests/pausing_writer.py EPOCH SCRIPT [ARGS ...]

Runs ``SCRIPT ARGS`` in this process with ``torch.save`` wrapped: once epoch ``EPOCH``'s
``checkpoint.pth`` data is in its temporary file (before the rename that publishes it), the writer
prints ``paused writing`` to stderr and sleeps until it is killed. Linux only (it names the file
behind the open descriptor through /proc).
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

import torch

PAUSED = "paused writing"


def pausing(save, epoch: str):
    def save_then_pause(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        if not isinstance(obj, dict) or str(obj.get("epoch")) != epoch or not hasattr(f, "fileno"):
            return
        temporary = Path(os.readlink(f"/proc/self/fd/{f.fileno()}"))
        if temporary.name.startswith("checkpoint.pth."):
            print(f"{PAUSED} {temporary}", file=sys.stderr, flush=True)
            while True:
                time.sleep(60)

    return save_then_pause


def main() -> None:
    epoch, script, *arguments = sys.argv[1:]
    torch.save = pausing(torch.save, epoch)
    sys.argv = [script, *arguments]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
