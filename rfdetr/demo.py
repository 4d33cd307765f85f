"""`make demo`: the most complete pipeline the project runs today, offline on a CPU.

For every model size: build the detector at its native geometry, load deterministic filled
weights (no weight file is needed), run a real photo (scikit-image's astronaut) through the
preprocessing and the detector, post-process, and print parameters, output shapes and latency.

    python -m rfdetr.demo [--sizes nano small] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import skimage.data
import torch

from rfdetr.config import SIZES, model_config
from rfdetr.models import PostProcess, build_detector
from rfdetr.preprocess import preprocess
from rfdetr.util.weight_fill import fill_model_


def run_size(size: str, photo, repeats: int) -> dict:
    config = model_config(size)
    model = fill_model_(build_detector(config), seed=0).eval()
    images = preprocess(photo, config.resolution)[None]
    latencies = []
    with torch.inference_mode():
        model(images)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            outputs = model(images)
            latencies.append(time.perf_counter() - start)
        detections = PostProcess(config.num_select)(outputs, torch.tensor([photo.shape[:2]]))[0]
    return {
        "size": size,
        "resolution": config.resolution,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "logits": tuple(outputs["pred_logits"].shape),
        "boxes": tuple(outputs["pred_boxes"].shape),
        "latency_ms": 1000 * statistics.median(latencies),
        "top_score": detections["scores"][0].item(),
        "top_box": [round(v, 1) for v in detections["boxes"][0].tolist()],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES), help="model sizes to run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per size (median reported)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    photo = skimage.data.astronaut()
    print(f"RT-DETR-Seg demo: detector forward on a {photo.shape[1]}x{photo.shape[0]} photo, "
          f"filled weights (seed 0), {args.threads} CPU threads\n")
    header = "| size | input | params (M) | pred_logits | pred_boxes | latency (ms) | top score | top box (xyxy px) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for size in args.sizes:
        r = run_size(size, photo, args.repeats)
        print(f"| {r['size']} | {r['resolution']}x{r['resolution']} | {r['params_m']:.2f} | {r['logits']} | "
              f"{r['boxes']} | {r['latency_ms']:.0f} | {r['top_score']:.3f} | {r['top_box']} |", flush=True)
    print("\nWeights are deterministic fills, not trained ones: boxes and scores are not meaningful yet.")


if __name__ == "__main__":
    main()
