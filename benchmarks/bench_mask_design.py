"""Where the stride-4 detail of the masks comes from: measured mask AP with and without the image stem.

The native projector gives the mask head one stride-16 level (nano), so the head must get finer
features from somewhere. Our design feeds it an :class:`~rfdetr.models.mask_heads.ImageStem` (three
stride-2 convs on the image, stride-8 and stride-4 maps). This script measures what the stem buys::

    .venv/bin/python benchmarks/bench_mask_design.py --json bench_mask_design.json

Recipe (CPU, ~12 minutes on 2 cores): a synthetic COCO set (``--images`` images, 3 classes, up to 3 objects,
``--resolution`` px) that is both the training and the validation split, a random-init nano detector
(20 queries, one group) trained for ``--detector_epochs`` so that it finds the objects, then, on that
same frozen detector, stage 2 for each variant and seed:

- ``stem`` (ours): the head fuses the stem's stride-8 and stride-4 maps;
- ``no-stem``: the stem is replaced by zero maps of the same shapes, so the fine path only carries
  the head's bilinear upsampling of its stride-16 features;
- ``upsampled-memory``: instead of the stem, the detector memory (the stride-16 projector level)
  bilinearly upsampled to strides 8 and 4 feeds the head's fine adapters.

Evaluation on the training images isolates the mask head from detector generalisation: the boxes
are the same for every variant, and mask AP at IoU .5:.95 and .75 measures boundary quality.
Reports the best epoch's segm AP / AP50 / AP75 per seed and their mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rfdetr.checkpoints.loading import load_model  # noqa: E402
from rfdetr.config import RunConfig, TrainConfig, mask_config, model_config  # noqa: E402
from rfdetr.datasets import make_synthetic_coco  # noqa: E402
from rfdetr.datasets.coco import dataset_classes  # noqa: E402
from rfdetr.models import build_detector, mask_heads, segmentation  # noqa: E402
from rfdetr.training.stages import build_trainer  # noqa: E402
from rfdetr.training.trainer import Trainer  # noqa: E402


class ZeroStem(nn.Module):
    """The image stem's interface (channels, shapes) with all-zero maps: no fine detail at all."""

    def __init__(self, channels: tuple[int, int, int] = mask_heads.STEM_CHANNELS, groups: int = 8):
        super().__init__()
        self.channels = channels
        self.out_channels = (channels[1], channels[2])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = images.shape
        side8, side4 = lambda n: -(-n // 8), lambda n: -(-n // 4)  # noqa: E731
        return (images.new_zeros(batch, self.channels[2], side8(height), side8(width)),
                images.new_zeros(batch, self.channels[1], side4(height), side4(width)))


class MemoryStem(ZeroStem):
    """Placeholder maps with the memory's width; :func:`upsampled_memory_forward` fills them with the
    detector memory bilinearly upsampled to strides 8 and 4 (the "upsample the coarse features" design)."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        width = model_config("nano").hidden_dim
        self.channels = (width, width, width)
        self.out_channels = (width, width)


def upsampled_memory_forward(module: segmentation.DETRsegm, samples):
    outputs = ORIGINAL_FORWARD(module, samples)
    if isinstance(module.image_stem, MemoryStem):
        context = outputs["mask_context"]
        outputs["mask_context"] = dataclasses.replace(context, fine_features=tuple(
            F.interpolate(context.memory, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            for fine in context.fine_features))
    return outputs


ORIGINAL_FORWARD = segmentation.DETRsegm.forward
VARIANTS = {"stem": mask_heads.ImageStem, "no-stem": ZeroStem, "upsampled-memory": MemoryStem}


def quick_config(args: argparse.Namespace, data: Path, output: Path, epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(dataset_dir=str(data), output_dir=str(output), epochs=epochs, lr=1e-3, lr_encoder=1e-3,
                       batch_size=4, grad_accum_steps=1, resolution=args.resolution, multi_scale=False,
                       num_workers=0, use_ema=False, run_test=False, tensorboard=False, progress="none",
                       device="cpu", seed=seed)


def train_detector(args: argparse.Namespace, data: Path, output: Path) -> Path:
    classes = dataset_classes(data)
    config = model_config("nano", num_classes=classes.num_rows - 1, num_queries=20, group_detr=1)
    torch.manual_seed(0)
    train = quick_config(args, data, output, args.detector_epochs, seed=0)
    result = Trainer(build_detector(config), RunConfig(stage="detector", model=config, train=train), classes).fit()
    print(f"detector: best bbox AP {result.best_metric:.3f} (epoch {result.best_epoch})", file=sys.stderr)
    return output / "checkpoint_best_total.pth"


def train_variant(args: argparse.Namespace, data: Path, detector: Path, output: Path, variant: str,
                  seed: int) -> dict:
    segmentation.DETRsegm.forward = upsampled_memory_forward
    try:
        classes = dataset_classes(data)
        loaded = load_model("nano", detector, class_names=classes, masks=False, require_trained_heads=True)
        torch.manual_seed(seed)
        model = segmentation.DETRsegm(loaded.model, freeze_detr=True, mask_head="light", image_stem=VARIANTS[variant]())
        run = RunConfig(stage="masks", model=loaded.config, mask=mask_config("nano"),
                        train=quick_config(args, data, output, args.mask_epochs, seed))
        result = build_trainer(run, model, classes).fit()
    finally:
        segmentation.DETRsegm.forward = ORIGINAL_FORWARD
    best = max(result.history, key=lambda record: record["valid_segm_AP"])
    stats = best["valid_segm_stats"]
    return {"variant": variant, "seed": seed, "epoch": best["epoch"], "segm_ap": stats[0], "segm_ap50": stats[1],
            "segm_ap75": stats[2], "bbox_ap": best["valid_bbox_AP"],
            "history": [record["valid_segm_AP"] for record in result.history]}


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | seeds | segm AP (mean) | segm AP50 | segm AP75 | per seed AP | bbox AP |",
             "|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        mean = lambda key: statistics.mean(r[key] for r in mine)  # noqa: E731
        lines.append(f"| {variant} | {len(mine)} | {mean('segm_ap'):.3f} | {mean('segm_ap50'):.3f} | "
                     f"{mean('segm_ap75'):.3f} | {', '.join(format(r['segm_ap'], '.3f') for r in mine)} | "
                     f"{mean('bbox_ap'):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="synthetic images (train = valid)")
    parser.add_argument("--resolution", type=int, default=128, help="image side and training resolution")
    parser.add_argument("--detector_epochs", type=int, default=80)
    parser.add_argument("--mask_epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--work_dir", help="keep data, detector and runs here (reused when present)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", metavar="PATH", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(args.work_dir or folder)
        data, detector = root / "data", root / "detector" / "checkpoint_best_total.pth"
        if not detector.is_file():  # a --work_dir of an earlier run keeps its data and detector
            if args.work_dir:
                shutil.rmtree(root, ignore_errors=True)
            make_synthetic_coco(data, seed=0, num_train=args.images, num_valid=1, num_test=0,
                                image_size=(args.resolution, args.resolution), max_objects=3)
            shutil.rmtree(data / "valid")
            shutil.copytree(data / "train", data / "valid")
            detector = train_detector(args, data, root / "detector")
        rows = []
        for seed in args.seeds:
            for variant in args.variants:
                run = root / f"{variant}_{seed}"
                shutil.rmtree(run, ignore_errors=True)
                rows.append(train_variant(args, data, detector, run, variant, seed))
                print(f"{variant} seed {seed}: segm AP per epoch "
                      f"{[round(ap, 3) for ap in rows[-1].pop('history')]}", file=sys.stderr)
    print(f"nano mask head, {args.images} synthetic images at {args.resolution} px (train = valid), detector "
          f"{args.detector_epochs} epochs, stage 2 {args.mask_epochs} epochs, best epoch per run\n")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
