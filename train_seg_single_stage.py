"""Single stage: train the detector and a mask head together, starting from the COCO checkpoint.

    python train_seg_single_stage.py --size nano --epochs 50 --batch 1 --accum 8
    python train_seg_single_stage.py --size nano --init_ckpt runs/detector_nano_384_1/checkpoint_best_total.pth
    python train_seg_single_stage.py --resume runs/seg_single_nano_384_1                 # continue exactly

The detector is built for the dataset's classes and loads --pretrain_weights (default: the size's
COCO checkpoint) strictly, all but the class heads; --init_ckpt starts from another detector
checkpoint instead (a stage-1 run's best file keeps its class heads when its classes are the
dataset's). Nothing is frozen; the best checkpoint follows segm AP. The run folder receives
single_stage_config.json, the checkpoints (``detr.*`` + ``mask_head.*``), log.txt and results.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rfdetr.cli import (add_training_flags, model_overrides, next_run_dir, resume_paths, run_training, split_patterns,
                        train_overrides)
from train_seg_stage2 import (_set_help, add_mask_flags, mask_options, previous_settings, run_banner,
                             write_run_record)

CONFIG_FILE = "single_stage_config.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_flags(parser)
    parser.set_defaults(size="nano")
    _set_help(parser, "--size", "model size (default: nano)")
    parser.add_argument("--pretrain_weights", default=None,
                        help="checkpoint name (rf-detr-<size>.pth, downloaded if needed), a path, or 'none' for "
                             "random init (default: the size's COCO checkpoint)")
    parser.add_argument("--init_ckpt", default=None,
                        help="detector checkpoint to start from instead of --pretrain_weights (e.g. a stage-1 "
                             "run's checkpoint_best_total.pth; its class heads are kept if its classes match)")
    add_mask_flags(parser)
    return parser.parse_args(argv)


def start_weights(args: argparse.Namespace, resuming: bool) -> str | None:
    """The detector's starting weights: --init_ckpt, --pretrain_weights or the COCO checkpoint; None = random."""
    from rfdetr.config import PRETRAINED_NAMES

    if args.init_ckpt and args.pretrain_weights:
        raise ValueError("give --init_ckpt or --pretrain_weights, not both")
    if resuming:  # the weights come from the run's checkpoint
        return None
    weights = args.init_ckpt or args.pretrain_weights or PRETRAINED_NAMES[args.size]
    return None if weights.lower() == "none" else weights


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from rfdetr.config import TrainConfig, model_config
    from rfdetr.training.distributed import is_main_process
    from rfdetr.training.segmentation import mask_run_summary, single_stage_run

    def train():
        resume_file, resume_dir = resume_paths(args.resume)
        previous = previous_settings(resume_dir, CONFIG_FILE)
        overrides = train_overrides(args)
        resolution = args.resolution or model_config(args.size).resolution
        if resume_file is not None:
            overrides["resume"] = str(resume_file)
            overrides.setdefault("output_dir", str(resume_dir))
        overrides.setdefault("output_dir", str(next_run_dir(f"seg_single_{args.size}_{resolution}")))
        config = TrainConfig(**overrides)
        weights = start_weights(args, resume_file is not None)
        options = {"mask_head": previous.get("mask_head"), **mask_options(args)}
        trainer = single_stage_run(config, size=args.size, pretrain_weights=weights,
                                   pretrain_exclude_keys=split_patterns(args.pretrain_exclude_keys),
                                   model_overrides=model_overrides(args), **options)
        summary = mask_run_summary(trainer, stage="single", pretrained=previous.get("pretrained", weights),
                                   pretrain_exclude_keys=split_patterns(args.pretrain_exclude_keys))
        if is_main_process():
            print(run_banner("RT-DETR-Seg single stage: detector + mask head", summary,
                             {"pretrained": summary["pretrained"] or "none (random)"}))
            write_run_record(Path(config.output_dir) / CONFIG_FILE, summary)
        return trainer.fit()

    return run_training(train, "segm")


if __name__ == "__main__":
    sys.exit(main())
