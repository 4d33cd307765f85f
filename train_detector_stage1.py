"""Stage 1: fine-tune the RF-DETR detector on a COCO-format dataset, starting from the COCO checkpoint.

    python train_detector_stage1.py --size nano --dataset_dir dataset --epochs 50 --batch 4 --accum 4
    python train_detector_stage1.py --size nano --pretrain_weights none --device cpu   # random init, offline
    torchrun --nproc_per_node=2 train_detector_stage1.py --size small --batch 2     # several GPUs
    python train_detector_stage1.py --resume runs/detector_nano_384_1                # continue exactly

The dataset folder holds train/, valid/ and optionally test/, each with _annotations.coco.json and
its images (a Roboflow COCO export). The class heads are built for the dataset's classes; the rest
of the network starts from --pretrain_weights. The run folder receives checkpoint.pth (resumable),
checkpoint_best_regular.pth, checkpoint_best_ema.pth, checkpoint_best_total.pth, log.txt,
results.json and TensorBoard scalars.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rfdetr.cli import (add_training_flags, banner, model_overrides, next_run_dir, resume_paths, run_training,
                        split_patterns, train_overrides)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_flags(parser)
    parser.add_argument("--pretrain_weights", default=None,
                        help="checkpoint name (rf-detr-<size>.pth, downloaded if needed), a path, or 'none' for "
                             "random init (default: the size's COCO checkpoint)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from rfdetr.config import PRETRAINED_NAMES, TrainConfig, model_config
    from rfdetr.training.distributed import is_main_process

    def train():
        resume_file, resume_dir = resume_paths(args.resume)
        overrides = train_overrides(args)
        resolution = args.resolution or model_config(args.size).resolution
        if resume_file is not None:
            overrides["resume"] = str(resume_file)
            overrides.setdefault("output_dir", str(resume_dir))
        overrides.setdefault("output_dir", str(next_run_dir(f"detector_{args.size}_{resolution}")))
        config = TrainConfig(**overrides)
        weights = args.pretrain_weights or PRETRAINED_NAMES[args.size]
        if resume_file is not None or weights.lower() == "none":
            weights = None  # resuming: the weights come from the run's checkpoint
        if is_main_process():
            print(banner("RT-DETR-Seg stage 1: detector fine-tuning", {
                "size": args.size, "resolution": resolution, "epochs": config.epochs, "device": config.device or "auto",
                "dataset": config.dataset_dir, "output": config.output_dir, "pretrained": weights or "none (random)",
                "batch": config.batch_size, "accum": config.grad_accum_steps,
                "effective batch": config.batch_size * config.grad_accum_steps, "workers": config.num_workers,
                "AMP": f"{config.amp} (CUDA only)", "multi-scale": config.multi_scale,
                "expanded scales": config.expanded_scales, "exclude keys": split_patterns(args.pretrain_exclude_keys),
                "resume": config.resume or "no"}))
        from rfdetr.detr import RFDETR

        model = RFDETR(args.size, pretrain_weights=weights, device=config.device,
                       pretrain_exclude_keys=split_patterns(args.pretrain_exclude_keys), **model_overrides(args))
        return model.train(**config.model_dump())

    return run_training(train, "bbox")


if __name__ == "__main__":
    sys.exit(main())
