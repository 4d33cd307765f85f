"""Accuracy of the reduced-precision paths on a trained checkpoint: fp32, bf16 (``dtype="bfloat16"``),
ONNX Runtime fp32 and int8 (``export(quantize="int8")``), each scored the same way.

Run from the repository root, on a trained checkpoint and the dataset it was trained on::

    .venv/bin/python benchmarks/bench_precision_accuracy.py RUN/checkpoint_best_total.pth DATASET_DIR

Every predictor runs ``predict()`` at threshold 0 on each validation image; pycocotools scores the
detections (box AP, and mask AP for a mask checkpoint). The table gives AP / AP50 per path, the
AP50 difference to fp32 in points, and the median ``predict()`` time per image with 2 threads.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def score(predictor, data: Path, iou_types: tuple[str, ...]) -> dict:
    """AP / AP50 per IoU type of ``predictor`` on ``data``'s validation split, and its median ms per image."""
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(data / "valid" / "_annotations.coco.json"))
    found, times = [], []
    for image in truth.dataset["images"]:
        start = time.perf_counter()
        detections = predictor.predict(str(data / "valid" / image["file_name"]), threshold=0.0)
        times.append(time.perf_counter() - start)
        for index, ((x0, y0, x1, y1), score_, category) in enumerate(zip(
                detections.xyxy, detections.confidence, detections.data["category_id"])):
            entry = {"image_id": image["id"], "category_id": int(category), "score": float(score_),
                     "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
            if "segm" in iou_types:
                entry["segmentation"] = mask_util.encode(np.asfortranarray(detections.mask[index], np.uint8))
            found.append(entry)
    result = {"ms": 1000 * statistics.median(times)}
    for iou_type in iou_types:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = COCOeval(truth, truth.loadRes(found), iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        result[iou_type] = {"ap": float(evaluation.stats[0]), "ap50": float(evaluation.stats[1])}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("dataset_dir")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from rfdetr.api import RFDETR
    from rfdetr.export import ONNXDetector
    from rfdetr.util.precision import cpu_has_bf16

    data = Path(args.dataset_dir)
    model = RFDETR(pretrain_weights=args.checkpoint, device="cpu")
    iou_types = ("bbox", "segm") if model.masks else ("bbox",)
    rows = {"PyTorch fp32": score(model, data, iou_types)}
    if cpu_has_bf16():
        rows["PyTorch bf16"] = score(RFDETR(pretrain_weights=args.checkpoint, device="cpu", dtype="bfloat16"),
                                     data, iou_types)
    with tempfile.TemporaryDirectory() as folder:
        int8 = model.export(folder, quantize="int8")
        rows["ONNX Runtime fp32"] = score(ONNXDetector(Path(folder) / "inference_model.onnx"), data, iou_types)
        rows["ONNX Runtime int8"] = score(ONNXDetector(int8), data, iou_types)
    print(f"{args.checkpoint} on {data / 'valid'}, {args.threads} threads\n")
    header = "| path | " + " | ".join(f"{t} AP | {t} AP50 | {t} AP50 vs fp32" for t in iou_types) + " | ms/image |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    base = rows["PyTorch fp32"]
    for name, row in rows.items():
        cells = [f"{row[t]['ap']:.3f} | {row[t]['ap50']:.3f} | {100 * (row[t]['ap50'] - base[t]['ap50']):+.1f}"
                 for t in iou_types]
        print(f"| {name} | " + " | ".join(cells) + f" | {row['ms']:.0f} |")


if __name__ == "__main__":
    main()
