"""``rfdetr predict`` and ``rfdetr export``: a trained checkpoint on images, or to ONNX."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

PREDICT_DOC = """Detect (and segment, for a mask checkpoint) objects in images; write annotated copies and a
COCO results file.

    rfdetr predict runs/detector_nano_384_1/checkpoint_best_total.pth photos/ --out predictions
    rfdetr predict model.pth a.jpg b.png "more/*.jpg" --threshold 0.3
    rfdetr predict export/inference_model.onnx photos/          # an exported model on ONNX Runtime

SOURCE: image files, folders (their images, not recursive) or glob patterns. OUT receives one
annotated image per input (same name, .jpg) and predictions.json: a COCO results list (image_id,
category_id, bbox [x, y, w, h], score, and segmentation as RLE for masks). Image ids come from the
folder's _annotations.coco.json when it lists the image (so pycocotools can score the file), else
1, 2, ... in input order; predictions_images.json maps every id to its file.
"""

EXPORT_DOC = """Export a checkpoint to ONNX (checked against PyTorch with ONNX Runtime).

    rfdetr export runs/detector_nano_384_1/checkpoint_best_total.pth --out export
    rfdetr export model.pth --out export --quantize int8    # also inference_model_int8.onnx
"""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def add_size_flag(parser: argparse.ArgumentParser) -> None:
    from rfdetr.config import SEG_SIZES, SIZES

    parser.add_argument("--size", choices=SIZES + SEG_SIZES, default=None,
                        help="model size, for a file that does not record it (a bare state dict); "
                             "default: the size the file records")


def image_paths(sources: list[str]) -> list[Path]:
    """The images named by ``sources`` (files, folders, globs), in order, each once; errors name a bad source."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(source) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not matches:
            raise FileNotFoundError(f"{source}: no such image, folder with images, or glob pattern matching images")
        found += [p for p in matches if p not in found]
    return found


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


def coco_results(image_id: int, detections) -> list[dict]:
    """``supervision.Detections`` of one image as COCO result entries (RLE ``segmentation`` with masks)."""
    import numpy as np
    from pycocotools import mask as mask_util

    entries = []
    for index, ((x0, y0, x1, y1), score, category) in enumerate(zip(
            detections.xyxy, detections.confidence, detections.data["category_id"])):
        entry = {"image_id": image_id, "category_id": int(category), "score": round(float(score), 5),
                 "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]}
        if detections.mask is not None:
            rle = mask_util.encode(np.asfortranarray(detections.mask[index].astype(np.uint8)))
            entry["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        entries.append(entry)
    return entries


def annotate(image, detections, class_names: dict[int, str]):
    """A PIL copy of ``image`` (H x W x 3 uint8) with masks, boxes and ``name score`` labels drawn by supervision."""
    import numpy as np
    import supervision as sv
    from PIL import Image

    canvas = image.copy() if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if detections.mask is not None and len(detections):
        canvas = sv.MaskAnnotator(opacity=0.45).annotate(canvas, detections)
    canvas = sv.BoxAnnotator(thickness=2).annotate(canvas, detections)
    labels = [f"{class_names.get(int(c), c)} {s:.2f}" for c, s in zip(detections.class_id, detections.confidence)]
    canvas = sv.LabelAnnotator(text_scale=0.4, text_padding=3).annotate(canvas, detections, labels=labels)
    return Image.fromarray(canvas)


def predict_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rfdetr predict", description=PREDICT_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="a .pth checkpoint (ours or upstream's), an upstream Lightning .ckpt or an "
                                        "exported .onnx model")
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="images, folders or glob patterns")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score (default: 0.5)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: cuda if available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="inference precision of a .pth model (bfloat16 needs CUDA or a CPU with AVX-512 BF16)")
    add_size_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rfdetr.weights import WeightsDownloadError

    try:
        paths = image_paths(args.sources)
        predictor = load_predictor(args.weights, args.device, args.dtype, args.size)
    except (FileNotFoundError, ValueError, WeightsDownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from rfdetr.images import read_image

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = coco_image_ids(paths)
    results, names = [], {}
    for path in paths:
        image = read_image(path)
        detections = predictor.predict(image, threshold=args.threshold)
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
    return 0


def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rfdetr export", description=EXPORT_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="a .pth checkpoint (ours or upstream's)")
    parser.add_argument("--out", default="export", help="output folder (default: export)")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="also write an int8 model (dynamic quantization of the matrix products)")
    parser.add_argument("--batch", type=int, default=1, help="batch size baked into the graph (default: 1)")
    add_size_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model = load_predictor(args.weights, "cpu", "float32", args.size)
        path = model.export(args.out, batch_size=args.batch, quantize=args.quantize)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logger.info("wrote %s", path)
    return 0
