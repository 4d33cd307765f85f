"""Learning benchmark: how well a short CPU run learns a small dataset, ours side by side with upstream.

Run from the repository root (each run takes about 13 minutes on 2 cores at the defaults)::

    .venv/bin/python benchmarks/bench_learning.py --seeds 0 1 2 --variant defaults= \\
        --variant no-multi-scale="--multi_scale 0" --json bench_learning.json
    .venv/bin/python benchmarks/bench_learning.py --upstream-python /path/to/side-venv/bin/python ...

The dataset is generated here (our synthetic generator, seed and classes of its own, not the
tests'): ``--train-images`` training and ``--valid-images`` validation images of 4 shape classes
on textured backgrounds, in the Roboflow COCO layout. Every run trains nano from random weights
(no model hub here) with ``train_detector_stage1.py`` for ``--epochs`` epochs, batch 4, no
accumulation, at ``--resolution``, with the variant's extra flags and ``--seed``, which seeds the
model's initialisation as well as the data order.

Upstream (``--upstream-python``: the interpreter of a side venv with ``rfdetr==1.2.1``) trains
``RFDETRNano(pretrain_weights=None)`` with ``train()`` on the same data and settings, multi-scale
off (upstream's CPU training fails with it on), from a scratch folder so that ``import rfdetr``
finds upstream, not this project.

With ``--mask-epochs M`` each project run goes on to stage 2 (``train_seg_stage2.py`` on its best
detector, ``--mask-flags`` for extra flags), scored the same way with COCOeval ``segm``.

Every run is then scored by the same independent evaluator: this project's ``predict()`` on each
validation image of ``checkpoint_best_total.pth`` (threshold 0, the 300 selected queries) and
pycocotools' COCOeval on the validation annotations; both kinds of checkpoint load through the same
code (upstream files are parity-tested). The table reports box AP and AP50 (mean and spread over
the seeds) and the wall time of training; per-epoch validation AP50 is printed from each log.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rfdetr.datasets import make_synthetic_coco  # noqa: E402

DATA_SEED = 2026  # not a seed any test uses
CLASSES = ("circle", "square", "triangle", "star")

UPSTREAM_DRIVER = """
import json, sys
from rfdetr import RFDETRNano
settings = json.loads(sys.argv[1])
model = RFDETRNano(pretrain_weights=None, resolution=settings.pop("resolution"))
model.train(**settings)
"""


def make_data(folder: Path, train_images: int, valid_images: int, side: int) -> Path:
    return make_synthetic_coco(folder, seed=DATA_SEED, num_train=train_images, num_valid=valid_images, num_test=0,
                               image_size=(side, side), classes=CLASSES, max_objects=3)


def train_ours(data: Path, run: Path, args: argparse.Namespace, seed: int, flags: list[str]) -> float:
    command = [sys.executable, str(ROOT / "train_detector_stage1.py"), "--size", "nano", "--pretrain_weights", "none",
               "--dataset_dir", str(data), "--output_dir", str(run), "--resolution", str(args.resolution),
               "--epochs", str(args.epochs), "--batch", "4", "--accum", "1", "--seed", str(seed), "--device", "cpu",
               "--early_stopping", "0", "--run_test", "0", "--tensorboard", "0", *flags]
    return _timed(command, cwd=ROOT)


def train_masks(data: Path, run: Path, masks: Path, args: argparse.Namespace, seed: int) -> float:
    """Stage 2 on the frozen best detector of ``run`` (the project's script, its defaults)."""
    command = [sys.executable, str(ROOT / "train_seg_stage2.py"), "--size", "nano", "--stage1_run", str(run),
               "--dataset_dir", str(data), "--output_dir", str(masks), "--epochs", str(args.mask_epochs),
               "--batch", "4", "--accum", "1",
               "--resolution", str(args.resolution), "--seed", str(seed), "--device", "cpu", "--early_stopping", "0",
               "--run_test", "0", "--tensorboard", "0", *args.mask_flags.split()]
    return _timed(command, cwd=ROOT)


def train_upstream(python: str, data: Path, run: Path, args: argparse.Namespace, seed: int) -> float:
    settings = {"resolution": args.resolution, "dataset_dir": str(data), "output_dir": str(run),
                "epochs": args.epochs, "batch_size": 4, "grad_accum_steps": 1, "multi_scale": False,
                "device": "cpu", "seed": seed, "early_stopping": False, "tensorboard": False, "wandb": False,
                "run_test": False}
    with tempfile.TemporaryDirectory() as scratch:  # not the project root: `import rfdetr` is upstream's
        driver = Path(scratch) / "drive_upstream.py"
        driver.write_text(UPSTREAM_DRIVER)
        return _timed([python, str(driver), json.dumps(settings)], cwd=Path(scratch))


def _timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def score(checkpoint: Path, data: Path, iou_type: str = "bbox") -> dict[str, float]:
    """AP / AP50 (``bbox``, or ``segm`` for a checkpoint with a mask head) of ``checkpoint`` on the
    validation split: predict() + pycocotools."""
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from rfdetr import RFDETRNano

    model = RFDETRNano(pretrain_weights=checkpoint, device="cpu")
    annotations = data / "valid" / "_annotations.coco.json"
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotations))
    found = []
    for image in truth.dataset["images"]:
        detections = model.predict(str(data / "valid" / image["file_name"]), threshold=0.0)
        for index, ((x0, y0, x1, y1), score_, category) in enumerate(zip(
                detections.xyxy, detections.confidence, detections.data["category_id"])):
            found.append({"image_id": image["id"], "category_id": int(category), "score": float(score_),
                          "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]})
            if iou_type == "segm":
                found[-1]["segmentation"] = mask_util.encode(np.asfortranarray(detections.mask[index], np.uint8))
    if not found:
        return {"ap": 0.0, "ap50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(truth, truth.loadRes(found), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"ap": max(0.0, float(evaluation.stats[0])), "ap50": max(0.0, float(evaluation.stats[1]))}


def epoch_ap50(run: Path, iou_type: str = "bbox") -> list[float]:
    """Per-epoch validation AP50 from a run's log.txt: ours (``valid_bbox_AP50`` / ``valid_segm_AP50``)
    or upstream's (``test_coco_eval_bbox``, the 12 COCO numbers; AP50 is the second)."""
    values = []
    for line in (run / "log.txt").read_text().splitlines():
        record = json.loads(line)
        if f"valid_{iou_type}_AP50" in record:
            values.append(record[f"valid_{iou_type}_AP50"])
        elif "test_coco_eval_bbox" in record:
            values.append(record["test_coco_eval_bbox"][1])
    return values


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, flags = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"--variant NAME=FLAGS, got {text!r}")
    return name, flags.split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=192)
    parser.add_argument("--train-images", type=int, default=48)
    parser.add_argument("--valid-images", type=int, default=16)
    parser.add_argument("--image-side", type=int, default=320, help="side of the generated images")
    parser.add_argument("--variant", type=parse_variant, action="append", default=None, metavar="NAME=FLAGS",
                        help="a project run: a name and extra script flags (default: defaults=, the defaults)")
    parser.add_argument("--upstream-python", default=None, help="python of a side venv with rfdetr==1.2.1")
    parser.add_argument("--upstream-only", action="store_true", help="run upstream only (no project variant)")
    parser.add_argument("--mask-epochs", type=int, default=0,
                        help="then train stage 2 on each project run's best detector for this many epochs and "
                             "score mask AP (default 0: detector only)")
    parser.add_argument("--mask-flags", default="", help="extra train_seg_stage2.py flags (one string)")
    parser.add_argument("--work", default="bench_learning_runs", help="folder for the dataset and the runs")
    parser.add_argument("--json", default=None, help="write every run's numbers here")
    args = parser.parse_args(argv)

    work = Path(args.work)
    data = make_data(work / "data", args.train_images, args.valid_images, args.image_side)
    runs = [] if args.upstream_only else list(args.variant or [("defaults", [])])
    if args.upstream_python:
        runs.append(("upstream-1.2.1 (multi-scale off)", None))
    results = []
    # seeds outside, runs inside: the runs of one seed follow each other, so a slow phase of the host
    # falls on every run alike rather than on one of them
    for seed in args.seeds:
        for name, flags in runs:
            run = work / "runs" / f"{name.split()[0]}_seed{seed}"
            if flags is None:
                seconds = train_upstream(args.upstream_python, data, run, args, seed)
            else:
                seconds = train_ours(data, run, args, seed, flags)
            scores = score(run / "checkpoint_best_total.pth", data)
            curve = epoch_ap50(run)
            results.append({"run": name, "seed": seed, "seconds": seconds, **scores, "epoch_ap50": curve})
            print(f"{name} seed {seed}: AP {scores['ap']:.3f} AP50 {scores['ap50']:.3f} in {seconds:.0f} s; "
                  f"per-epoch AP50 {' '.join(f'{v:.2f}' for v in curve)}", flush=True)
            if args.mask_epochs and flags is not None:
                masks = run.with_name(run.name + "_masks")
                mask_seconds = train_masks(data, run, masks, args, seed)
                segm = score(masks / "checkpoint_best_total.pth", data, "segm")
                results[-1].update({"mask_seconds": mask_seconds, "mask_ap": segm["ap"], "mask_ap50": segm["ap50"],
                                    "epoch_mask_ap50": epoch_ap50(masks, "segm")})
                print(f"  stage 2: mask AP {segm['ap']:.3f} AP50 {segm['ap50']:.3f} in {mask_seconds:.0f} s; "
                      f"per-epoch mask AP50 {' '.join(f'{v:.2f}' for v in results[-1]['epoch_mask_ap50'])}",
                      flush=True)
    print("\n| run | box AP | box AP50 | wall time (s) | mask AP | mask AP50 | stage-2 wall time (s) |\n"
          "|---|---|---|---|---|---|---|")
    for name, _ in runs:
        mine = [r for r in results if r["run"] == name]
        masks = [r for r in mine if "mask_ap" in r]
        stage2 = (f"{_spread([r['mask_ap'] for r in masks])} | {_spread([r['mask_ap50'] for r in masks])} | "
                  f"{statistics.mean(r['mask_seconds'] for r in masks):.0f}") if masks else "| |"
        print(f"| {name} | {_spread([r['ap'] for r in mine])} | {_spread([r['ap50'] for r in mine])} | "
              f"{statistics.mean(r['seconds'] for r in mine):.0f} | {stage2} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args) | {"variant": runs}, "runs": results},
                                              indent=2, default=str))
    return 0


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
