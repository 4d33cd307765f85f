"""Pretrained-weight lookup and download, against a throw-away HTTP server on 127.0.0.1."""

from __future__ import annotations

import argparse
import fractions
import io
import pathlib
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from rfdetr.checkpoints.download import (
    WeightsDownloadError,
    cache_dir,
    download_file,
    is_pretrained_name,
    resolve_weights,
)
from rfdetr.checkpoints.files import CheckpointError, read_checkpoint
from rfdetr.config import SEG_SIZES, SIZES, model_config


def _checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.arange(4.0)}}, buffer)
    return buffer.getvalue()


CHECKPOINT = _checkpoint_bytes()


def _training_file_bytes() -> bytes:
    """A training file as upstream writes it: ``args`` holds a numpy scalar and a filesystem path."""
    buffer = io.BytesIO()
    args = argparse.Namespace(lr=np.float64(1e-4), output_dir=pathlib.PosixPath("/runs/coco"), epochs=12)
    torch.save({"model": {"w": torch.arange(4.0)}, "args": args, "epoch": 11}, buffer)
    return buffer.getvalue()


TRAINING_FILE = _training_file_bytes()


class _Handler(BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        if self.path == "/good.pth":
            self._reply(CHECKPOINT)
        elif self.path == "/truncated.pth":
            self._reply(CHECKPOINT[:100], length=len(CHECKPOINT))
        elif self.path == "/training.pth":
            self._reply(TRAINING_FILE)
        elif self.path == "/html.pth":
            self._reply(b"<html>quota exceeded</html>")
        else:
            self.send_error(404)

    def _reply(self, body: bytes, length: int | None = None):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        """Silent: the tests read the server's behaviour, not its access log."""


@pytest.fixture
def server():
    _Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("RFDETR_CACHE", str(folder))
    monkeypatch.chdir(tmp_path)
    return folder


def test_every_size_default_weights_download_their_own_file(server, cache, monkeypatch):
    # The table's https addresses are answered by the local server; the test records which were asked for.
    fetched = []
    real_urlopen = urllib.request.urlopen

    def redirect(url, timeout):
        fetched.append(url)
        return real_urlopen(f"{server}/good.pth", timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", redirect)
    for size in SIZES + SEG_SIZES:
        name = model_config(size).pretrain_weights  # what a wrapper loads when given no weights
        assert is_pretrained_name(name), name  # read as trusted
        path = resolve_weights(name)
        assert path == cache / name and path.read_bytes() == CHECKPOINT
        # The published files carry their size in the address (nano_coco/..., rf-detr-large.pth, rf-detr-seg-n-ft.pth).
        expected = f"rf-detr-seg-{size.split('-')[1][0]}" if size.startswith("seg-") else size
        assert fetched[-1].startswith("https://") and expected in fetched[-1], (size, fetched[-1])
    assert len(fetched) == len(set(fetched)) == len(SIZES + SEG_SIZES)  # no two sizes share a file


def test_download_then_reuse_cache(server, cache):
    urls = {"model.pth": f"{server}/good.pth"}
    path = resolve_weights("model.pth", urls=urls)
    assert path == cache / "model.pth" and cache_dir() == cache
    assert path.read_bytes() == CHECKPOINT
    assert resolve_weights("model.pth", urls=urls) == path
    assert _Handler.requests == ["/good.pth"]  # the second call did not download again
    assert list(cache.iterdir()) == [path]


def test_lookup_order(server, cache, tmp_path):
    urls = {"model.pth": f"{server}/good.pth"}
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(CHECKPOINT)
    assert resolve_weights(explicit, urls=urls) == explicit
    (tmp_path / "model.pth").write_bytes(CHECKPOINT)  # the current folder
    assert resolve_weights("model.pth", urls=urls).resolve() == (tmp_path / "model.pth").resolve()
    cache.mkdir()
    (cache / "model.pth").write_bytes(CHECKPOINT)  # the cache comes before the current folder
    assert resolve_weights("model.pth", urls=urls) == cache / "model.pth"
    assert _Handler.requests == []


@pytest.mark.parametrize("path, reason", [("/missing.pth", "404"), ("/truncated.pth", "100"),
                                          ("/html.pth", "cannot read checkpoint")])
def test_failed_download_leaves_nothing(server, cache, path, reason):
    url = f"{server}{path}"
    with pytest.raises(WeightsDownloadError) as caught:
        resolve_weights("model.pth", urls={"model.pth": url})
    message = str(caught.value)
    assert url in message and reason in message and str(cache / "model.pth") in message
    assert list(cache.iterdir()) == []


def test_server_gone(cache):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/good.pth"
    with pytest.raises(WeightsDownloadError, match="save it as"):
        download_file(url, cache / "model.pth", timeout=5)
    assert list(cache.iterdir()) == []


def test_interrupt_removes_partial_file(server, cache, monkeypatch):
    def interrupted(path, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr("rfdetr.checkpoints.download.read_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_file(f"{server}/good.pth", cache / "model.pth")
    assert list(cache.iterdir()) == []


def test_unknown_name_and_offline(cache):
    with pytest.raises(FileNotFoundError, match="rf-detr-nano.pth"):
        resolve_weights("rf-detr-tiny.pth")
    with pytest.raises(FileNotFoundError, match="nano_coco/checkpoint_best_regular.pth"):
        resolve_weights("rf-detr-nano.pth", download=False)


def test_table_files_may_hold_data_only_globals_other_files_name_them(server, cache, tmp_path):
    # Upstream training files pickle numpy scalars and paths in ``args``: a file of the table is
    # read with those allowed (it used to be deleted as "incomplete").
    path = resolve_weights("model.pth", urls={"model.pth": f"{server}/training.pth"})
    args = read_checkpoint(path, trusted=True)["args"]
    assert args.lr == 1e-4 and args.output_dir == pathlib.PosixPath("/runs/coco")
    # Any other file: the error names the globals and how to allow them; nothing is unpickled.
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert "multiarray.scalar" in message and "pathlib.PosixPath" in message and str(path) in message
    assert "add_safe_globals" in message and "argparse.Namespace" not in message
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {}, "note": fractions.Fraction(1, 3)}, foreign)
    with pytest.raises(CheckpointError, match="fractions.Fraction"):
        read_checkpoint(foreign, trusted=True)  # trust covers the listed data types only
