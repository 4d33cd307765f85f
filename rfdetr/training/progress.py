"""Progress of training steps and evaluation passes, for a terminal or for a log file.

``"bar"``: a tqdm bar (a terminal); ``"line"``: a log line every ``interval`` seconds and none per
step (a log file, CI, ``nohup``, a notebook's captured output); ``"none"``: nothing; ``"auto"``:
``"bar"`` when stderr is a terminal, else ``"line"``. The trainer adds one summary line per epoch
in every mode but ``"none"``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)

LINE_INTERVAL_S = 30.0


def resolve_mode(mode: str, stream: Any = None) -> str:
    """``mode`` with ``"auto"`` decided by whether ``stream`` (default stderr) is a terminal."""
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    return "bar" if getattr(stream, "isatty", lambda: False)() else "line"


class Progress:
    """Counts the steps of one pass; shows them as the mode says (see the module docstring)."""

    def __init__(self, mode: str, total: int, desc: str, *, unit: str = "step", interval: float = LINE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.mode, self.total, self.desc, self.unit = resolve_mode(mode), total, desc, unit
        self.interval, self.clock = interval, clock
        self.count = 0
        self.postfix: dict[str, str] = {}
        self.started = self.last_line = clock()
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, **postfix: str) -> None:
        self.count += 1
        self.postfix = postfix
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(**postfix)
            self.bar.update()
        elif self.mode == "line" and self.clock() - self.last_line >= self.interval and self.count < self.total:
            self.last_line = self.clock()
            logger.info("%s: %d/%d %ss%s, %.0f s", self.desc, self.count, self.total, self.unit,
                        "".join(f", {key} {value}" for key, value in postfix.items()), self.last_line - self.started)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    @property
    def seconds(self) -> float:
        return self.clock() - self.started


def epoch_summary(record: dict[str, Any], epochs: int, seconds: float, select_on: str) -> str:
    """One line for a finished epoch of the run log ``record``: losses, lr, validation AP (regular, EMA)."""
    parts = [f"epoch {record['epoch']}/{epochs - 1} ({seconds:.0f} s): train loss {record.get('train_loss', 0.0):.4f}",
             f"lr {record.get('train_lr', 0.0):.2e}", f"valid loss {record.get('valid_loss', float('nan')):.4f}"]
    for kind in ("bbox", "segm") if select_on == "segm" else ("bbox",):
        if record.get(f"valid_{kind}_AP") is not None:
            parts.append(f"{kind} AP50 {record[f'valid_{kind}_AP50']:.3f} AP {record[f'valid_{kind}_AP']:.3f}")
        if record.get(f"ema_valid_{kind}_AP") is not None:
            parts.append(f"EMA {kind} AP50 {record[f'ema_valid_{kind}_AP50']:.3f} "
                         f"AP {record[f'ema_valid_{kind}_AP']:.3f}")
    return ", ".join(parts)
