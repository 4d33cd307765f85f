"""Keep freed memory in the process while a CPU training run allocates the same large buffers every step.

glibc's ``malloc`` serves each request above its mmap threshold (128 KiB, rising to at most
32 MiB) with a fresh ``mmap`` and unmaps it again on ``free``. A training step on the CPU
allocates and frees activations and gradients of tens to hundreds of MiB (nano at 192 px, batch 4:
a 15,600 x 2,048 fp32 FFN activation is 122 MiB), so every step faults its working set back in page
by page, and the kernel zeroes every page first: about 370,000 page faults and 1 s of system time
per step on a 2-core host. :func:`retained_heap` makes ``malloc`` serve every request from its
heap (``M_MMAP_MAX = 0``) and keep what is freed (``M_TRIM_THRESHOLD`` raised), so that after a few
steps every step reuses pages that earlier steps freed (faster steps; docs/benchmarks.md has the
figures). The process keeps its peak memory between steps instead of handing it back, and buffers of
different sizes (multi-scale training) leave gaps that add to the peak.

These settings belong to the whole process, so only a process this package owns turns them on by
itself: the training scripts and the ``rfdetr train`` command. ``RFDETR.train()`` runs in the
user's process and does so only when asked (``retain_heap=True``). When the block ends, the values
in effect before it are restored and the free heap is returned to the system (``malloc_trim``).
glibc has no getter for them, so they are read from the environment (:func:`settings_in_effect`),
which glibc read at start-up; a variable changed since, or an earlier ``mallopt`` call in the process,
cannot be seen. (glibc also stops adapting its mmap threshold once ``M_TRIM_THRESHOLD`` has been set.)

``RFDETR_CPU_HEAP`` in the environment: ``retain`` (the default) or ``system`` (leave ``malloc``
as it is). Elsewhere than glibc (macOS, musl, Windows) nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
from typing import Iterator, Mapping

logger = logging.getLogger(__name__)

# mallopt() parameters (glibc's malloc.h) and glibc's defaults for the two that are changed
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536
RETAINED_TRIM_THRESHOLD = 2**31 - 1  # an int; in practice "never trim"
SETTINGS = ("retain", "system")
INT_MAX = 2**31 - 1

# parameter -> (glibc tunable, its older environment variable, glibc's default)
_SOURCES = {
    M_MMAP_MAX: ("glibc.malloc.mmap_max", "MALLOC_MMAP_MAX_", DEFAULT_MMAP_MAX),
    M_TRIM_THRESHOLD: ("glibc.malloc.trim_threshold", "MALLOC_TRIM_THRESHOLD_", DEFAULT_TRIM_THRESHOLD),
}
ENVIRONMENT_VARIABLES = tuple(variable for _, variable, _ in _SOURCES.values())


@functools.lru_cache(maxsize=1)
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else ``None``."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return None
    if not all(hasattr(library, symbol) for symbol in ("mallopt", "malloc_trim", "gnu_get_libc_version")):
        return None
    library.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    library.mallopt.restype = ctypes.c_int
    library.malloc_trim.argtypes = [ctypes.c_size_t]
    library.malloc_trim.restype = ctypes.c_int
    return library


def heap_setting() -> str:
    """``RFDETR_CPU_HEAP``: ``"retain"`` (default) or ``"system"``; an unknown value warns and retains."""
    setting = os.environ.get("RFDETR_CPU_HEAP", "retain")
    if setting not in SETTINGS:
        logger.warning("RFDETR_CPU_HEAP=%s is not one of %s; using retain", setting, ", ".join(SETTINGS))
        return "retain"
    return setting


def _unsigned(text: str) -> int | None:
    """A number as glibc reads tunables (decimal, ``0x`` hex, leading-``0`` octal); None if it is not one."""
    text = text.strip()
    base = 16 if text.lower().startswith("0x") else 8 if len(text) > 1 and text.startswith("0") else 10
    try:
        value = int(text[2:] if base == 16 else text, base)
    except ValueError:
        return None
    return value if value >= 0 else None


def settings_in_effect(environ: Mapping[str, str]) -> dict[int, int]:
    """``{M_MMAP_MAX: n, M_TRIM_THRESHOLD: n}`` that glibc took from ``environ`` at start-up.

    ``GLIBC_TUNABLES`` (``glibc.malloc.mmap_max=N:glibc.malloc.trim_threshold=N``) wins over the older
    ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_``, as in glibc; a value glibc would not read is
    ignored; what no variable sets is glibc's default. Values are capped at ``INT_MAX`` (``mallopt``
    takes an int)."""
    tunables = {}
    for entry in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = entry.partition("=")
        tunables[name.strip()] = value
    found = {}
    for parameter, (tunable, variable, default) in _SOURCES.items():
        values = (_unsigned(tunables[tunable]) if tunable in tunables else None,
                  _unsigned(environ[variable]) if variable in environ else None)
        found[parameter] = min(next((value for value in values if value is not None), default), INT_MAX)
    return found


@contextlib.contextmanager
def retained_heap(enabled: bool = True) -> Iterator[bool]:
    """Within the block, ``malloc`` keeps freed memory for reuse (see the module); yields whether it does.

    ``enabled=False`` (e.g. a CUDA run, whose large buffers live on the device), ``RFDETR_CPU_HEAP=system``
    or a C library other than glibc: nothing changes and the block gets ``False``. Afterwards the
    settings the environment gave the process are back (:func:`settings_in_effect`).
    """
    library = glibc() if enabled and heap_setting() == "retain" else None
    if library is None:
        yield False
        return
    before = settings_in_effect(os.environ)
    changed = library.mallopt(M_MMAP_MAX, 0) == 1 and library.mallopt(M_TRIM_THRESHOLD, RETAINED_TRIM_THRESHOLD) == 1
    try:
        yield changed
    finally:
        library.mallopt(M_MMAP_MAX, before[M_MMAP_MAX])
        library.mallopt(M_TRIM_THRESHOLD, before[M_TRIM_THRESHOLD])
        library.malloc_trim(0)
