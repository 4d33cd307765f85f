"""`make demo`: the most complete pipeline the project runs today, offline on a CPU.

1. Every model size: build the detector at its native geometry with deterministic filled
   weights (no weight file needed), run a real photo, print parameters, output shapes, latency.
2. The user API: write the filled nano weights as a checkpoint, load it with
   ``RFDETRNano(pretrain_weights=...)``, ``predict()`` a photo, draw the detections with
   supervision's annotators into ``demo_output/``; export to ONNX and predict with ONNX Runtime.
3. Both stages on embedded data: generate the synthetic COCO set, lint it with ``validate_setup.py``,
   train a small random-init nano (128 px, 20 queries) with ``train_detector_stage1.py``, show
   ``shrink_head.py`` on the COCO-table checkpoint, train the mask head on the frozen detector with
   ``train_seg_stage2.py``, predict the held-out test images with masks, draw them and print box and
   mask AP; then a small video panned across two held-out test images, predicted with track ids by
   ``rfdetr predict``'s video path into ``demo_output/video/`` (annotated mp4 + one JSON line per frame).

Filled weights are not trained weights: the boxes of parts 1-2 are not meaningful, the pipeline is.

    python -m rfdetr.demo [--sizes nano small] [--threads 2] [--output_dir demo_output] [--epochs 60] [--mask_epochs 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from rfdetr.checkpoints.files import read_checkpoint
from rfdetr.config import SIZES, model_config
from rfdetr.datasets.preprocess import preprocess
from rfdetr.models import PostProcess, build_detector
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

    labels = [f"{name} {score:.2f}" for name, score in zip(detections.data["class_name"], detections.confidence)]
    image = photo.copy()
    if detections.mask is not None:
        image = sv.MaskAnnotator(opacity=0.45).annotate(image, detections)
    image = sv.BoxAnnotator(thickness=2).annotate(image, detections)
    image = sv.LabelAnnotator(text_scale=0.4).annotate(image, detections, labels=labels)
    Image.fromarray(image).save(path)


def wrapper_pipeline(output_dir: Path, photo: np.ndarray) -> None:
    from rfdetr import RFDETRNano
    from rfdetr.checkpoints.durable import save_checkpoint
    from rfdetr.checkpoints.files import make_checkpoint
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


def training_pipeline(output_dir: Path, epochs: int, mask_epochs: int) -> None:
    """Synthetic data -> validate_setup -> stage 1 -> shrink_head demo -> stage 2 -> masks on held-out images."""
    import shutil

    from rfdetr import RFDETRNano
    from rfdetr.cli import shrink, training, validate
    from rfdetr.datasets import make_synthetic_coco

    data, detector_run, mask_run = output_dir / "synthetic", output_dir / "detector_run", output_dir / "mask_run"
    for folder in (data, detector_run, mask_run):
        shutil.rmtree(folder, ignore_errors=True)
    make_synthetic_coco(data, seed=0, num_train=48, num_valid=8, num_test=8, image_size=(128, 128))
    print(f"\nSynthetic COCO dataset: {data} (train 48, valid 8, test 8 images)\n")
    _run("validate_setup.py", validate.main(["--dataset_dir", str(data), "--skip_env", "--stage", "2"]))
    # Early stopping off: the demo runs its fixed epochs on an 8-image validation split (noisy AP).
    quick = ["--dataset_dir", str(data), "--accum", "1", "--resolution", "128", "--multi_scale", "0",
             "--workers", "0", "--device", "cpu", "--early_stopping", "0", "--lr_scheduler", "cosine"]
    # At 128 px activations are small: no recomputation in backward, and batches of 8 (they learn more in
    # the demo's time than batches of 4: docs/benchmarks.md).
    _run("train_detector_stage1.py", training.stage1_main([
        "--size", "nano", "--pretrain_weights", "none", "--output_dir", str(detector_run), "--epochs", str(epochs),
        "--num_queries", "20", "--group_detr", "1", "--lr", "1e-3", "--lr_encoder", "1e-3", "--batch", "8",
        "--gradient_checkpointing", "0", *quick]))
    print("\nshrink_head.py on the COCO-table checkpoint (keeps person and dog in every class head):")
    _run("shrink_head.py", shrink.shrink_main(["--in_ckpt", str(output_dir / "rf-detr-nano-filled.pth"),
                                             "--out_ckpt", str(output_dir / "nano-person-dog.pth"),
                                             "--keep", "person", "dog"]))
    _run("train_seg_stage2.py", training.stage2_main([
        "--size", "nano", "--stage1_run", str(detector_run), "--output_dir", str(mask_run),
        "--epochs", str(mask_epochs), "--seg_lr", "1e-3", "--batch", "4", *quick]))
    model = RFDETRNano(pretrain_weights=mask_run / "checkpoint_best_total.pth", device="cpu")
    test_images = sorted((data / "test").glob("*.jpg"))[:4]
    tiles = []
    for path, found in zip(test_images, model.predict([str(p) for p in test_images], threshold=0.3)):
        tiles.append(output_dir / f"masks_{path.stem}.png")
        annotate(np.asarray(Image.open(path).convert("RGB")), found, tiles[-1])
    print(f"\nheld-out test images with boxes and masks: {', '.join(map(str, tiles))}")
    video_pipeline(output_dir / "video", model, test_images[:2])
    pictures = [run / name for run in (detector_run, mask_run)
                for name in ("results.png", "val_predictions.jpg", "confusion_matrix.png") if (run / name).is_file()]
    print(f"training curves, validation predictions and confusion matrices: {', '.join(map(str, pictures))}\n")
    print("| run | split | bbox AP | bbox AP50 | segm AP | segm AP50 |\n|---|---|---|---|---|---|")
    for name, run in (("stage 1 (detector)", detector_run), ("stage 2 (masks)", mask_run)):
        checkpoint = read_checkpoint(run / "checkpoint_best_total.pth")
        for split, metrics in (("valid", checkpoint.get("metrics")), ("test", checkpoint.get("test_metrics"))):
            bbox, segm = (metrics or {}).get("bbox") or {}, (metrics or {}).get("segm") or {}
            print(f"| {name} | {split} | {bbox.get('ap', 0):.3f} | {bbox.get('ap50', 0):.3f} | "
                  f"{segm.get('ap', float('nan')):.3f} | {segm.get('ap50', float('nan')):.3f} |")


def video_pipeline(output_dir: Path, model, images: list[Path], frames: int = 16, step: int = 8) -> None:
    """A clip panning across ``images`` side by side (objects move ``step`` px a frame), predicted with tracking."""
    from rfdetr.cli.video import predict_video_file
    from rfdetr.video import VideoWriter

    output_dir.mkdir(parents=True, exist_ok=True)
    strip = np.concatenate([np.asarray(Image.open(path).convert("RGB")) for path in images], axis=1)
    height, width = strip.shape[0], strip.shape[1] - (frames - 1) * step
    clip = output_dir / "synthetic_pan.avi"
    with VideoWriter(clip, 8.0, width, height) as writer:
        for index in range(frames):
            writer.write(np.ascontiguousarray(strip[:, index * step:index * step + width]))
    start = time.perf_counter()
    predict_video_file(model, clip, output_dir / "synthetic_pan.mp4", output_dir / "synthetic_pan.jsonl",
                       threshold=0.3, every=1, track=True)
    print(f"video: {clip} ({frames} frames) -> {output_dir / 'synthetic_pan.mp4'} with track ids, "
          f"{output_dir / 'synthetic_pan.jsonl'} ({time.perf_counter() - start:.1f} s)")


def _run(script: str, code: int) -> None:
    if code != 0:
        raise SystemExit(f"{script} failed with exit code {code}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES), help="model sizes to run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per size (median reported)")
    parser.add_argument("--output_dir", type=Path, default=Path("demo_output"), help="where images and files go")
    parser.add_argument("--epochs", type=int, default=60, help="stage-1 epochs on the synthetic set")
    parser.add_argument("--mask_epochs", type=int, default=30, help="stage-2 epochs on the synthetic set")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    photo = skimage.data.astronaut()
    print(f"RT-DETR-Seg demo on a {photo.shape[1]}x{photo.shape[0]} photo, filled weights (seed 0), "
          f"{args.threads} CPU threads\n")
    model_table(args.sizes, photo, args.repeats)
    wrapper_pipeline(args.output_dir, photo)
    print("\nFilled weights are deterministic, not trained: the detections above show the pipeline, not accuracy.")
    training_pipeline(args.output_dir, args.epochs, args.mask_epochs)


if __name__ == "__main__":
    main()
