"""Pretrained weights: the name -> URL table, the cache folder and a safe download.

Lookup order for ``resolve_weights(name_or_path)``:

1. a path to an existing file (anything that is not a table name);
2. for a table name, the cache folder (``$RFDETR_CACHE``, default ``~/.cache/rfdetr``);
3. the current folder (where the upstream package saves its downloads);
4. a download into the cache folder.

A download streams into a temporary file beside its destination, checks the byte count against
``Content-Length`` and that it reads as a checkpoint of the table (``trusted``: the data-only
globals that upstream training files pickle are allowed), then renames it into place. Any
failure removes the temporary file and raises :class:`WeightsDownloadError`, which names the URL
and where the file can be put by hand.
"""

from __future__ import annotations

import http.client
import logging
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Mapping

from rfdetr.checkpoints.files import CheckpointError, read_checkpoint

logger = logging.getLogger(__name__)

_BUCKET = "https://storage.googleapis.com/rfdetr"
PRETRAINED_URLS: dict[str, str] = {
    "rf-detr-nano.pth": f"{_BUCKET}/nano_coco/checkpoint_best_regular.pth",
    "rf-detr-small.pth": f"{_BUCKET}/small_coco/checkpoint_best_regular.pth",
    "rf-detr-medium.pth": f"{_BUCKET}/medium_coco/checkpoint_best_regular.pth",
    "rf-detr-base.pth": f"{_BUCKET}/rf-detr-base-coco.pth",
    "rf-detr-base-2.pth": f"{_BUCKET}/rf-detr-base-2.pth",
    "rf-detr-large.pth": f"{_BUCKET}/rf-detr-large.pth",
    # upstream 1.11's segmentation models (sizes seg-*), under the names upstream saves them as
    "rf-detr-seg-preview.pt": f"{_BUCKET}/rf-detr-seg-preview.pt",
    "rf-detr-seg-nano.pt": f"{_BUCKET}/rf-detr-seg-n-ft.pth",
    "rf-detr-seg-small.pt": f"{_BUCKET}/rf-detr-seg-s-ft.pth",
    "rf-detr-seg-medium.pt": f"{_BUCKET}/rf-detr-seg-m-ft.pth",
    "rf-detr-seg-large.pt": f"{_BUCKET}/rf-detr-seg-l-ft.pth",
    "rf-detr-seg-xlarge.pt": f"{_BUCKET}/rf-detr-seg-xl-ft.pth",
    "rf-detr-seg-xxlarge.pt": f"{_BUCKET}/rf-detr-seg-2xl-ft.pth",
}
CHUNK_BYTES = 1 << 20


class WeightsDownloadError(RuntimeError):
    """A pretrained checkpoint could not be downloaded; nothing partial was left behind."""


def cache_dir() -> Path:
    """Folder for downloaded checkpoints: ``$RFDETR_CACHE`` or ``~/.cache/rfdetr``."""
    configured = os.environ.get("RFDETR_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "rfdetr"


def is_pretrained_name(name_or_path: str | os.PathLike) -> bool:
    """Whether this names a file of the pretrained-weights table (which is read as trusted)."""
    return os.fspath(name_or_path) in PRETRAINED_URLS


def resolve_weights(name_or_path: str | os.PathLike, *, download: bool = True,
                    urls: Mapping[str, str] | None = None, timeout: float = 60.0) -> Path:
    """The local file for a checkpoint name from the table, or for a path."""
    urls = PRETRAINED_URLS if urls is None else urls
    name = os.fspath(name_or_path)
    if name not in urls:  # a path (a table name is a bare file name, looked up below)
        candidate = Path(name).expanduser()
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"checkpoint {name!r} is neither an existing file nor a pretrained name; "
                                f"pretrained names: {', '.join(sorted(urls))}")
    for folder in (cache_dir(), Path.cwd()):
        if (folder / name).is_file():
            return folder / name
    destination = cache_dir() / name
    if not download:
        raise FileNotFoundError(f"{name} is not in {cache_dir()} or {Path.cwd()} and downloading is off; "
                                f"download {urls[name]} and save it as {destination}")
    return download_file(urls[name], destination, timeout=timeout)


def download_file(url: str, destination: str | os.PathLike, *, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``destination`` atomically and check that it is a readable checkpoint."""
    from tqdm.auto import tqdm

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    logger.info("downloading %s to %s", url, destination)
    try:
        with os.fdopen(handle, "wb") as sink, urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected is not None else None
            received = 0
            with tqdm(total=expected, unit="B", unit_scale=True, desc=destination.name) as progress:
                while chunk := response.read(CHUNK_BYTES):
                    sink.write(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
        if expected is not None and received != expected:
            raise WeightsDownloadError(_failure(url, destination, f"got {received} of {expected} bytes"))
        read_checkpoint(temporary, trusted=True)  # a file of the table: its data-only globals are allowed
        os.replace(temporary, destination)
    except WeightsDownloadError:
        _remove(temporary)
        raise
    except (OSError, http.client.HTTPException, CheckpointError) as error:
        # OSError covers HTTP errors, refused connections and timeouts (urllib.error.URLError is one);
        # HTTPException covers a connection closed mid-body.
        _remove(temporary)
        raise WeightsDownloadError(_failure(url, destination, str(error))) from error
    except BaseException:
        _remove(temporary)
        raise
    return destination


def _failure(url: str, destination: Path, reason: str) -> str:
    return (f"could not download {url}: {reason}. Download it by hand (browser, curl) and save it as "
            f"{destination}, or pass its path as pretrain_weights")


def _remove(path: str) -> None:
    Path(path).unlink(missing_ok=True)
