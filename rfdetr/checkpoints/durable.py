"""Atomic, durable checkpoint files.

:func:`save_checkpoint` writes a temporary file next to the target, flushes and fsyncs it, renames
it over the target and fsyncs the folder: whatever stops the process (an exception, Ctrl-C, a full
disk, kill -9, a power cut after the rename) leaves either the previous file or the new one, both
whole. Only kill -9 mid-write can leave the temporary behind; :func:`remove_stale_temporaries`
clears those when a run resumes.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

# Suffix of the temporary files that save_checkpoint renames into place.
TEMPORARY_SUFFIX = ".tmp"


def save_checkpoint(checkpoint: Mapping, path: str | os.PathLike) -> Path:
    """Write atomically and durably: a temporary file in the same folder, flushed and fsynced, renamed
    over ``path``, then the folder fsynced. An interruption or a full disk leaves the previous file
    intact and no temporary behind; a full disk is an ``OSError`` that says how much space was needed.
    (A process killed mid-write can leave its temporary: :func:`remove_stale_temporaries` clears them.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as sink:
            torch.save(dict(checkpoint), sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if _is_disk_full(error):  # torch's zip writer may report it as a RuntimeError caused by the OSError
            needed = _tensor_bytes(checkpoint) / 2**20
            raise OSError(errno.ENOSPC, f"no space left on the device to write {path}: it needs about "
                                        f"{needed:.0f} MB; free space there (the previous {path.name} is intact)"
                          ) from error
        raise
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that writers killed mid-write left in ``folder``; returns them."""
    stale = sorted(Path(folder).glob(f"*.pth.*{TEMPORARY_SUFFIX}"))
    for temporary in stale:
        temporary.unlink(missing_ok=True)
    return stale


def _is_disk_full(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (where the OS allows opening a folder)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0
