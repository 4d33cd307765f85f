"""`make demo`: the most complete pipeline the project runs today, offline on a CPU.

1. Every model size: build the detector at its native geometry with deterministic filled
   weights (no weight file needed), run a real photo, print parameters, output shapes, latency.
2. The user API: write the filled nano weights as a checkpoint, load it with
   ``RFDETRNano(pretrain_weights=...)``, ``predict()`` a photo, draw the detections with
   supervision's annotators into ``demo_output/``; export to ONNX and predict with ONNX Runtime.

Filled weights are not trained weights: the boxes are not meaningful, the pipeline is.

    python -m rfdetr.demo [--sizes nano small] [--threads 2] [--output_dir demo_output]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch

from rfdetr.config import SIZES, model_config
from rfdetr.models import PostProcess, build_detector
from rfdetr.preprocess import preprocess
from rfdetr.util.weight_fill import fill_model_


def model_table(sizes: list[str], photo: np.ndarray, repeats: int) -> None:
    header = "| size | input | params (M) | pred_logits | pred_boxes | latency (ms) | top score |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for size in sizes:
        config = model_config(size)
        model = fill_model_(build_detector(config), seed=0).eval()
        images = preprocess(photo, config.resolution)[None]
        latencies = []
        with torch.inference_mode():
            outputs = model(images)  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                outputs = model(images)
                latencies.append(time.perf_counter() - start)
            top = PostProcess(config.num_select)(outputs, torch.tensor([photo.shape[:2]]))[0]["scores"][0]
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {size} | {config.resolution}x{config.resolution} | {params:.2f} | "
              f"{tuple(outputs['pred_logits'].shape)} | {tuple(outputs['pred_boxes'].shape)} | "
              f"{1000 * statistics.median(latencies):.0f} | {top.item():.3f} |", flush=True)


def annotate(photo: np.ndarray, detections, path: Path) -> None:
    import supervision as sv
    from PIL import Image

    labels = [f"{name} {score:.2f}" for name, score in zip(detections.data["class_name"], detections.confidence)]
    image = sv.BoxAnnotator(thickness=2).annotate(photo.copy(), detections)
    image = sv.LabelAnnotator(text_scale=0.4).annotate(image, detections, labels=labels)
    Image.fromarray(image).save(path)


def wrapper_pipeline(output_dir: Path, photo: np.ndarray) -> None:
    from rfdetr import RFDETRNano
    from rfdetr.checkpoint import make_checkpoint, save_checkpoint
    from rfdetr.classes import ClassTable
    from rfdetr.export import ONNXDetector

    output_dir.mkdir(parents=True, exist_ok=True)
    config = model_config("nano")
    checkpoint = output_dir / "rf-detr-nano-filled.pth"
    save_checkpoint(make_checkpoint(fill_model_(build_detector(config)), config, ClassTable.coco()), checkpoint)
    model = RFDETRNano(pretrain_weights=checkpoint, device="cpu")
    start = time.perf_counter()
    detections = model.predict(photo, threshold=0.9)
    elapsed = 1000 * (time.perf_counter() - start)
    print(f"\nRFDETRNano(pretrain_weights={checkpoint}).predict(photo, threshold=0.9): "
          f"{len(detections)} detections in {elapsed:.0f} ms (first call)")
    for name, score, box in list(zip(detections.data["class_name"], detections.confidence, detections.xyxy))[:5]:
        print(f"  {name:<14} {score:.3f}  xyxy {np.round(box, 1).tolist()}")
    annotate(photo, detections[:20], output_dir / "predict_nano.png")
    print(f"annotated image: {output_dir / 'predict_nano.png'}")

    onnx_path = model.export(output_dir)
    runtime_detections = ONNXDetector(onnx_path).predict(photo, threshold=0.9)
    print(f"ONNX export: {onnx_path} (verified against PyTorch); ONNX Runtime predict: "
          f"{len(runtime_detections)} detections")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES), help="model sizes to run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per size (median reported)")
    parser.add_argument("--output_dir", type=Path, default=Path("demo_output"), help="where images and files go")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    photo = skimage.data.astronaut()
    print(f"RT-DETR-Seg demo on a {photo.shape[1]}x{photo.shape[0]} photo, filled weights (seed 0), "
          f"{args.threads} CPU threads\n")
    model_table(args.sizes, photo, args.repeats)
    wrapper_pipeline(args.output_dir, photo)
    print("\nFilled weights are deterministic, not trained: the detections show the pipeline, not accuracy.")


if __name__ == "__main__":
    main()
