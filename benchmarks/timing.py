"""Wall-clock timing shared by the benchmark scripts; plain Python, so that a side venv's interpreter
(``upstream_forward.py``, ``upstream_train_step.py``) can import it beside its own ``rfdetr``."""

from __future__ import annotations

import time


def timed_ms(fn, warmup: int, runs: int) -> list[float]:
    """Wall-clock milliseconds of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):  # first calls pay for allocator growth and kernel selection
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times
