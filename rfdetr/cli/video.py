"""``rfdetr predict`` on a video file: an annotated copy and one JSON line per predicted frame.

For ``clip.mp4`` the output folder gets ``clip.mp4`` (every frame of the input at its fps and size;
the predicted frames with boxes, masks and ``#track name score`` labels drawn, frames skipped by
``--every`` copied unannotated) and ``clip.jsonl``: one record per predicted frame,
``{"frame": index, "time": seconds, "detections": [...]}``, the detections in the COCO results form
of ``predictions.json`` (``image_id`` is the frame index; ``track_id`` added with ``--track``). Each
line is flushed when written and the video is finished on any error, so a video that breaks off
leaves both files valid up to the fault.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def output_paths(path: Path, out: Path, taken: set[Path]) -> tuple[Path, Path]:
    """``(annotated video, JSON-lines file)`` in ``out`` for the video ``path``; a stem already ``taken`` by
    another input of the same call gets a number."""
    stem, number = path.stem, 1
    while out / f"{stem}.mp4" in taken:
        number += 1
        stem = f"{path.stem}_{number}"
    video = out / f"{stem}.mp4"
    if video.resolve() == path.resolve():
        raise ValueError(f"{path}: the annotated video would overwrite the input; choose another --out folder")
    taken.add(video)
    return video, out / f"{stem}.jsonl"


def frame_record(frame: Any) -> dict:
    """A predicted :class:`~rfdetr.video.VideoFrame` as its JSON-lines record."""
    from rfdetr.cli.drawing import coco_results

    detections = frame.detections
    entries = coco_results(frame.index, detections)
    if detections.tracker_id is not None:
        for entry, track_id in zip(entries, detections.tracker_id):
            entry["track_id"] = int(track_id)
    return {"frame": frame.index, "time": round(frame.time, 4), "detections": entries}


def predict_video_file(predictor: Any, path: Path, video_out: Path, records_out: Path, *, threshold: float,
                       every: int, track: bool) -> int:
    """Predict the video ``path`` into ``video_out`` and ``records_out`` (module docstring); returns the number
    of predicted frames. Raises :class:`~rfdetr.video.VideoError` for a video that breaks off, after
    writing what came before."""
    from rfdetr.cli.drawing import annotate
    from rfdetr.training.progress import Progress
    from rfdetr.video import VideoReader, VideoWriter, predict_frames

    with VideoReader(path) as reader:  # the header, for the writer and the progress bar
        fps, width, height, count = reader.fps, reader.width, reader.height, reader.frame_count
    frames = predict_frames(predictor, path, threshold, every=every, track=track, skipped=True)
    progress = Progress("auto", total=count, desc=path.name, unit="frame")
    predicted, started = 0, time.perf_counter()
    try:
        with VideoWriter(video_out, fps, width, height) as writer, open(records_out, "w") as records:
            for frame in frames:
                if frame.detections is None:
                    writer.write(frame.image)
                else:
                    writer.write(np.asarray(annotate(frame.image, frame.detections, predictor.class_names)))
                    records.write(json.dumps(frame_record(frame)) + "\n")
                    records.flush()
                    predicted += 1
                progress.update()
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    logger.info("%s: %d frames predicted in %.1f s (%.2f frames/s) -> %s, %s", path, predicted, seconds,
                predicted / max(seconds, 1e-9), video_out, records_out)
    return predicted


def predict_videos(predictor: Any, paths: list[Path], out: Path, *, threshold: float, every: int,
                   track: bool) -> None:
    """Each video of ``paths`` into ``out``; a video that breaks off raises, naming what was kept of it."""
    from rfdetr.video import VideoError

    taken: set[Path] = set()
    for path in paths:
        video_out, records_out = output_paths(path, out, taken)
        try:
            predict_video_file(predictor, path, video_out, records_out, threshold=threshold, every=every,
                               track=track)
        except VideoError as error:
            kept = [str(p) for p in (video_out, records_out) if p.is_file()]
            raise VideoError(f"{error}{' (kept: ' + ', '.join(kept) + ')' if kept else ''}") from error
