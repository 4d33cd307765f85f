"""``rfdetr predict`` and ``rfdetr export``: a trained checkpoint on images, or to ONNX."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

PREDICT_DOC = """Detect (and segment, for a mask checkpoint) objects in images and videos; write annotated copies,
a COCO results file for the images and a JSON-lines file per video.

    rfdetr predict runs/detector_nano_384_1/checkpoint_best_total.pth photos/ --out predictions
    rfdetr predict model.pth a.jpg b.png "more/*.jpg" --threshold 0.3
    rfdetr predict export/inference_model.onnx photos/          # an exported model on ONNX Runtime
    rfdetr predict model.pth clip.mp4 --track --every 2          # a video, with ByteTrack ids

SOURCE: image or video files, folders (their images and videos, not recursive) or glob patterns;
videos are told by their suffix (.mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .wmv .flv). OUT receives
one annotated image per input image (same name, .jpg) and predictions.json: a COCO results list
(image_id, category_id, bbox [x, y, w, h], score, and segmentation as RLE for masks). Image ids come
from the folder's _annotations.coco.json when it lists the image (so pycocotools can score the
file), else 1, 2, ... in input order; predictions_images.json maps every id to its file.

A video clip.mp4 gives OUT/clip.mp4 (every frame, same fps and size; frames skipped by --every are
copied unannotated) and OUT/clip.jsonl: one line per predicted frame, {"frame", "time", "detections"}
with the detections as in predictions.json (image_id = frame index; track_id with --track). A video
that cannot be opened or breaks off is an error naming it; what was written before stays valid.
"""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def add_size_flag(parser: argparse.ArgumentParser) -> None:
    from rfdetr.config import SEG_SIZES, SIZES

    parser.add_argument("--size", choices=SIZES + SEG_SIZES, default=None,
                        help="model size, for a file that does not record it (a bare state dict); "
                             "default: the size the file records")


def media_paths(sources: list[str]) -> tuple[list[Path], list[Path]]:
    """``(images, videos)`` named by ``sources`` (files, folders, globs), in order, each once; errors name a bad
    source. A file named outright is a video when its suffix is a video's, else an image."""
    from rfdetr.video import VIDEO_SUFFIXES, is_video

    images: list[Path] = []
    videos: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            matches = [path]
        else:
            found = sorted(path.iterdir()) if path.is_dir() else sorted(Path(p) for p in glob.glob(source))
            matches = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
        if not matches:
            raise FileNotFoundError(f"{source}: no such image or video, folder with images or videos, or glob "
                                    "pattern matching them")
        for match in matches:
            kind = videos if is_video(match) else images
            if match not in kind:
                kind.append(match)
    return images, videos


def load_predictor(weights: str, device: str | None, dtype: str, size: str | None = None):
    """An ``RFDETR`` wrapper for a ``.pth``/``.ckpt`` checkpoint (its size from the file, else ``size``), an
    ``ONNXDetector`` for ``.onnx``."""
    if weights.endswith(".onnx"):
        from rfdetr.export import ONNXDetector

        return ONNXDetector(weights)
    from rfdetr.api import RFDETR

    return RFDETR(size, pretrain_weights=weights, device=device, dtype=dtype)


def coco_image_ids(paths: list[Path]) -> dict[Path, int]:
    """Image ids: from the ``_annotations.coco.json`` beside an image when it lists it, else 1, 2, ... (unused ids)."""
    known: dict[Path, int] = {}
    for folder in {p.parent for p in paths}:
        annotations = folder / "_annotations.coco.json"
        if annotations.is_file():
            for image in json.loads(annotations.read_text()).get("images", []):
                known[folder / image["file_name"]] = int(image["id"])
    ids, next_id = {}, 1
    for path in paths:
        if path in known:
            ids[path] = known[path]
            continue
        while next_id in known.values() or next_id in ids.values():
            next_id += 1
        ids[path] = next_id
    return ids


def predict_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "rfdetr predict", description=PREDICT_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="a .pth checkpoint (ours or upstream's), an upstream Lightning .ckpt or an "
                                        "exported .onnx model")
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="images, videos, folders or glob patterns")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score (default: 0.5)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: cuda if available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="inference precision of a .pth model (bfloat16 needs CUDA or a CPU with AVX-512 BF16)")
    parser.add_argument("--every", type=int, default=1,
                        help="videos: predict every N-th frame (default: 1, every frame)")
    parser.add_argument("--track", action="store_true", help="videos: ByteTrack track ids in labels and records")
    add_size_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rfdetr.checkpoints.download import WeightsDownloadError

    try:
        if args.every < 1:
            raise ValueError(f"--every must be at least 1, got {args.every}")
        paths, videos = media_paths(args.sources)
        predictor = load_predictor(args.weights, args.device, args.dtype, args.size)
    except (FileNotFoundError, ValueError, WeightsDownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if paths:
        predict_images(predictor, paths, out, args.threshold)
    if videos:
        from rfdetr.cli.video import predict_videos

        try:
            predict_videos(predictor, videos, out, threshold=args.threshold, every=args.every, track=args.track)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0


def predict_images(predictor, paths: list[Path], out: Path, threshold: float) -> None:
    """Annotated copies, ``predictions.json`` and ``predictions_images.json`` in ``out`` (see PREDICT_DOC)."""
    from rfdetr.cli.drawing import annotate, coco_results
    from rfdetr.datasets.images import read_image

    ids = coco_image_ids(paths)
    results, names = [], {}
    for path in paths:
        image = read_image(path)
        detections = predictor.predict(image, threshold=threshold)
        results += coco_results(ids[path], detections)
        target = out / f"{path.stem}.jpg"
        if target.name in names.values():
            target = out / f"{path.stem}_{ids[path]}.jpg"
        annotate(image, detections, predictor.class_names).save(target, quality=92)
        names[ids[path]] = target.name
        logger.info("%s: %d detections -> %s", path, len(detections), target)
    (out / "predictions.json").write_text(json.dumps(results))
    (out / "predictions_images.json").write_text(json.dumps(
        [{"id": ids[p], "file_name": str(p), "annotated": names[ids[p]]} for p in paths], indent=1))
    logger.info("wrote %d annotated images and %s (%d detections)", len(paths), out / "predictions.json",
                len(results))
