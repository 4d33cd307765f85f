"""Frames per second of video prediction: ``predict_video`` and ``rfdetr predict clip.mp4``, per precision.

Run from the repository root (on a quiet machine: a shared host moves these figures by tens of percent)::

    .venv/bin/python benchmarks/bench_video.py --size nano --threads 2 --frames 20

Writes a synthetic ``--width`` x ``--height`` mp4 (squares moving over a textured background) and
times, for each precision of ``--dtypes``:

- decode: reading the frames alone (OpenCV, BGR->RGB);
- predict_video: ``model.predict_video(path)`` over every frame (decode, preprocessing, the model,
  post-processing), also with ``track=True``;
- rfdetr predict: the command's video path (the above, plus drawing, encoding the annotated mp4 and
  the JSON-lines file);
- forward: the model alone on the preprocessed frame, timed in the same process just before, and the
  share of ``predict_video``'s time per frame spent outside it: the figure that survives a noisy host.

The model has deterministic filled weights (speed does not depend on them) with the COCO class
table; threshold 0.5. ``bfloat16`` is ``RFDETR*(dtype="bfloat16")``; on a CPU without native bf16
(no AVX-512 BF16 or AMX) that constructor refuses, and the row is measured with the same bf16
autocast forced onto the wrapper, marked "emulated": what a user would get by overriding the check.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_clip(path: Path, frames: int, width: int, height: int, fps: float = 30.0) -> None:
    from rfdetr.video import VideoWriter

    rng = np.random.default_rng(0)
    background = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
    with VideoWriter(path, fps, width, height) as writer:
        for i in range(frames):
            frame = background.copy()
            for k, colour in enumerate(((230, 40, 40), (40, 40, 230), (40, 200, 40))):
                x, y = (40 + 9 * i + 150 * k) % (width - 80), 60 + 110 * k
                frame[y:y + 70, x:x + 70] = colour
            writer.write(frame)


def filled_checkpoint(size: str, folder: Path) -> Path:
    from rfdetr.checkpoints.files import make_checkpoint
    from rfdetr.classes import ClassTable
    from rfdetr.config import model_config
    from rfdetr.models import build_detector
    from rfdetr.util.weight_fill import fill_model_

    config = model_config(size)
    path = folder / f"{size}-filled.pth"
    torch.save(make_checkpoint(fill_model_(build_detector(config), seed=0), config, ClassTable.coco()), path)
    return path


def load(size: str, checkpoint: Path, dtype: str, device: str):
    """``(wrapper, note)``: the model in ``dtype``, bf16 autocast forced where the CPU check refuses it."""
    import functools

    from rfdetr.api import RFDETR
    from rfdetr.util.precision import PrecisionUnavailable

    try:
        return RFDETR(size, pretrain_weights=checkpoint, device=device, dtype=dtype), ""
    except PrecisionUnavailable:
        model = RFDETR(size, pretrain_weights=checkpoint, device=device)
        model._autocast = functools.partial(torch.autocast, device_type=model.device.type, dtype=torch.bfloat16)
        return model, " (emulated: no native bf16 on this CPU)"


def forward_seconds(model, frame: np.ndarray, count: int) -> float:
    """Median time of the model's forward alone on ``frame`` preprocessed as ``predict`` does it."""
    import statistics

    from rfdetr.inference import prepare_batch

    batch, _, _ = prepare_batch(frame, model.config.resolution, model.device, model.style.antialias)
    times = []
    with torch.inference_mode(), model._autocast():
        for _ in range(count):
            start = time.perf_counter()
            model.model(batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def rate(frames: int, seconds: float) -> str:
    return f"{frames / seconds:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="nano", help="model size (default: nano)")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"],
                        help="precisions to time")
    parser.add_argument("--frames", type=int, default=20, help="frames in the synthetic video")
    parser.add_argument("--width", type=int, default=640, help="video width")
    parser.add_argument("--height", type=int, default=480, help="video height")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from rfdetr.cli.video import predict_video_file
    from rfdetr.video import VideoReader

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        clip = folder / "clip.mp4"
        write_clip(clip, args.frames, args.width, args.height)
        checkpoint = filled_checkpoint(args.size, folder)
        start = time.perf_counter()
        with VideoReader(clip) as reader:
            decoded = sum(1 for _ in reader.frames())
        decode = time.perf_counter() - start
        print(f"{args.size}, {args.width}x{args.height}, {args.frames} frames, {args.threads} threads, "
              f"device {args.device}; decode alone: {rate(decoded, decode)} frames/s\n")
        print("| dtype | predict_video (frames/s) | with track=True | rfdetr predict clip.mp4 | ms/frame | "
              "forward alone (ms) | outside the forward |")
        print("|---|---|---|---|---|---|---|")
        for dtype in args.dtypes:
            model, note = load(args.size, checkpoint, dtype, args.device)
            with VideoReader(clip) as reader:
                first = next(reader.frames())[1]
            for _ in range(2):  # warm-up: first-call allocations and kernel choices
                model.predict(first)
            forward = forward_seconds(model, first, count=3)
            timings = {}
            for track in (False, True):
                start = time.perf_counter()
                count = sum(1 for _ in model.predict_video(clip, track=track))
                timings[track] = time.perf_counter() - start
            start = time.perf_counter()
            predict_video_file(model, clip, folder / "out.mp4", folder / "out.jsonl", threshold=0.5, every=1,
                               track=False)
            command = time.perf_counter() - start
            per_frame = timings[False] / count
            print(f"| {dtype}{note} | {rate(count, timings[False])} | {rate(count, timings[True])} | "
                  f"{rate(count, command)} | {1000 * per_frame:.0f} | {1000 * forward:.0f} | "
                  f"{100 * (per_frame - forward) / per_frame:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
