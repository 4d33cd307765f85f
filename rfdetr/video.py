"""Video files in and out, and predictions frame by frame: ``RFDETR.predict_video`` and ``rfdetr predict clip.mp4``.

Frames are decoded by OpenCV one at a time (a video is never held in memory whole) and handed out
as ``H x W x 3`` uint8 RGB arrays. :func:`predict_frames` runs ``predictor.predict`` on every
``every``-th frame and, with ``track=True``, gives the detections ByteTrack ids
(:mod:`rfdetr.tracking`). The tracker is made inside the generator: one model serves any number of
videos and threads at once.

A video that cannot be opened, or that ends more than one frame before the count its header
announces (a truncated file, a decode error), raises :class:`VideoError` naming the file; a
generator raises it after handing out the frames it could read. One frame of slack covers
containers whose count is estimated from the duration (Matroska, WebM).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from rfdetr.inference import check_threshold
from rfdetr.tracking import ByteTracker

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv")
FRAME_COUNT_SLACK = 1
TRACK_LOW_THRESHOLD = 0.1  # ByteTrack's low-score floor: boxes above it may continue a track


class VideoError(ValueError):
    """A video file that cannot be opened, read to its end or written; the message names the file."""


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


class _ClosedOnExit:
    """A context manager whose exit (also after an error) calls the subclass's ``close``."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class VideoReader(_ClosedOnExit):
    """An open video file: ``fps``, ``frame_count`` (from the header; 0 when unknown), ``width``, ``height``.

    Use as a context manager (the file is released on exit); :meth:`frames` decodes it.
    """

    def __init__(self, path: str | os.PathLike):
        import cv2

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file {self.path} does not exist")
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            raise VideoError(f"cannot open video file {self.path}: OpenCV reads no video from it "
                             "(a truncated or corrupt file, or a codec this OpenCV build lacks)")
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        self.frame_count = max(0, int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if not (math.isfinite(self.fps) and self.fps > 0) or self.width <= 0 or self.height <= 0:
            self.close()
            raise VideoError(f"video file {self.path} has no frame rate or frame size in its header "
                             f"(fps {self.fps}, {self.width}x{self.height})")

    def frames(self, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, RGB frame)`` for frames 0, ``every``, 2 ``every``, ...; the others are skipped undecoded
        where the codec allows. Raises :class:`VideoError` at an early end (module docstring)."""
        import cv2

        index = 0
        try:
            while True:
                if index % every == 0:
                    ok, bgr = self._capture.read()
                else:
                    ok, bgr = self._capture.grab(), None
                if not ok:
                    break
                if bgr is not None:
                    yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                index += 1
        except cv2.error as error:
            raise VideoError(f"video file {self.path}: decoding frame {index} failed: {error}") from error
        if self.frame_count and index < self.frame_count - FRAME_COUNT_SLACK:
            raise VideoError(f"video file {self.path} ends after {index} of the {self.frame_count} frames its header "
                             "announces (a truncated or corrupt file); the frames before were processed")

    def close(self) -> None:
        self._capture.release()


class VideoWriter(_ClosedOnExit):
    """Writes RGB frames of one size to ``path``: MJPG for ``.avi``, MPEG-4 Part 2 (mp4v) otherwise.

    A context manager: the file is finished on exit, also after an error, so a partial video plays.
    """

    def __init__(self, path: str | os.PathLike, fps: float, width: int, height: int):
        import cv2

        self.path, self.size = Path(path), (int(width), int(height))
        codec = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*codec), float(fps), self.size)
        if not self._writer.isOpened():
            raise VideoError(f"cannot write video file {self.path} ({codec} at {fps} fps, {width}x{height})")

    def write(self, frame: np.ndarray) -> None:
        import cv2

        if frame.shape[:2] != (self.size[1], self.size[0]) or frame.dtype != np.uint8:
            raise VideoError(f"{self.path}: a frame of shape {frame.shape} ({frame.dtype}) does not fit this "
                             f"{self.size[0]}x{self.size[1]} uint8 video")
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()


@dataclass(frozen=True)
class VideoFrame:
    """One frame of a video: ``index`` (from 0), ``time`` in seconds (index / fps), ``image`` (``H x W x 3``
    uint8 RGB) and ``detections`` (``supervision.Detections`` as ``predict`` returns them, with
    ``tracker_id`` when tracking; ``None`` for a frame skipped by ``every``)."""

    index: int
    time: float
    image: np.ndarray
    detections: Any


def predict_frames(predictor: Any, path: str | os.PathLike, threshold: float = 0.5, *, every: int = 1,
                   track: bool = False, skipped: bool = False) -> Iterator[VideoFrame]:
    """A generator of :class:`VideoFrame` for the video at ``path``, predicted by ``predictor.predict``.

    ``every``: predict frames 0, ``every``, 2 ``every``, ...; ``skipped``: also hand out the frames in
    between (with ``detections=None``) instead of leaving them out. ``track``: ByteTrack ids in
    ``detections.tracker_id`` (-1 for a box on no confirmed track yet); then a box scoring under
    ``threshold`` (down to 0.1) is kept too where it continues a track, as ByteTrack's second
    association does. Bad arguments and a missing file raise here; a video that cannot be read
    raises :class:`VideoError` from the generator.
    """
    check_threshold(threshold)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a whole number of frames >= 1, got {every!r}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    return _predicted_frames(predictor, Path(path), float(threshold), every, track, skipped)


def _predicted_frames(predictor: Any, path: Path, threshold: float, every: int, track: bool,
                      skipped: bool) -> Iterator[VideoFrame]:
    with VideoReader(path) as reader:
        tracker = None
        query_threshold = threshold
        if track:
            low = min(TRACK_LOW_THRESHOLD, threshold)
            tracker = ByteTracker(reader.fps / every, high_threshold=threshold, low_threshold=low)
            query_threshold = low
        for index, image in reader.frames(1 if skipped else every):
            time = index / reader.fps
            if index % every:
                yield VideoFrame(index, time, image, None)
                continue
            detections = predictor.predict(image, threshold=query_threshold)
            if tracker is not None:
                detections = tracker.update(detections)
                detections = detections[(detections.confidence > threshold) | (detections.tracker_id >= 0)]
            yield VideoFrame(index, time, image, detections)
