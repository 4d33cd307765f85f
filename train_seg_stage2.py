"""Stage 2: train a mask head on the frozen detector of a stage-1 run.

    python train_seg_stage2.py --stage1_run runs/detector_nano_384_1 --epochs 50
    python train_seg_stage2.py --size small --checkpoint detector.pth --batch 2 --accum 2
    python train_seg_stage2.py --resume runs/segmentation_nano_384_1                  # continue exactly

The detector is loaded strictly from the stage-1 checkpoint (found in --stage1_run as
checkpoint_best_total.pth, checkpoint_best_regular.pth, checkpoint_best_ema.pth, checkpoint.pth,
or the fork's best.pth/best.pt/last.pth/last.pt) and must have the dataset's classes; it stays
frozen (eval mode, no gradients) and only the mask head trains. The best checkpoint follows segm
AP. The run folder receives stage2_config.json (settings, classes, frozen/trainable parameter
counts), the checkpoints (``detr.*`` + ``mask_head.*`` weights), log.txt and results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rfdetr.cli import (add_training_flags, banner, model_overrides, next_run_dir, resume_paths, run_training,
                        train_overrides)

CONFIG_FILE = "stage2_config.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_flags(parser)
    # The size is the checkpoint's: --size is only needed for files that do not record it.
    parser.set_defaults(size=None)
    _set_help(parser, "--size", "model size (default: the one recorded in the checkpoint)")
    parser.add_argument("--stage1_run", default=None, help="stage-1 run folder holding the detector checkpoint")
    parser.add_argument("--checkpoint", default=None, help="detector checkpoint file (wins over --stage1_run)")
    parser.add_argument("--seg_lr", dest="lr", type=float, default=None,
                        help="mask-head learning rate, same as --lr (default: 1e-4)")
    add_mask_flags(parser)
    return parser.parse_args(argv)


# add_mask_flags, mask_options, previous_settings and run_banner are shared with train_seg_single_stage.py.
def add_mask_flags(parser: argparse.ArgumentParser) -> None:
    """The mask-head flags (defaults: the keyword defaults of rfdetr.training.segmentation's run builders)."""
    parser.add_argument("--mask_head", choices=("small", "nano"), default=None,
                        help="mask head architecture (default: nano for the nano size, small otherwise)")
    parser.add_argument("--mask_loss_coef", type=float, default=None,
                        help="weight of the per-pixel mask loss, sigmoid BCE (default: 1)")
    parser.add_argument("--dice_loss_coef", type=float, default=None, help="weight of the Dice loss (default: 1)")


def mask_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for the mask flags the user gave."""
    return {name: getattr(args, name) for name in ("mask_head", "mask_loss_coef", "dice_loss_coef")
            if getattr(args, name) is not None}


def _set_help(parser: argparse.ArgumentParser, flag: str, text: str) -> None:
    for action in parser._actions:  # argparse has no public way to edit a shared flag's help
        if flag in action.option_strings:
            action.help = text


def detector_checkpoint(args: argparse.Namespace, resume_file: Path | None) -> Path:
    """--checkpoint, else the best file of --stage1_run, else (resuming) the run's own checkpoint."""
    from rfdetr.training.segmentation import find_stage1_checkpoint

    if args.checkpoint:
        return Path(args.checkpoint)
    if args.stage1_run:
        return find_stage1_checkpoint(args.stage1_run)
    if resume_file is not None:  # a stage-2 checkpoint holds the detector under detr.*
        return resume_file
    raise ValueError("pass the stage-1 detector: --stage1_run RUN_FOLDER or --checkpoint FILE")


def previous_settings(run_dir: Path | None, name: str = CONFIG_FILE) -> dict:
    """The resumed run's settings file ``name`` (empty for a new run)."""
    path = run_dir / name if run_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def run_banner(title: str, summary: dict, rows: dict) -> str:
    """The banner of a mask run: ``rows`` first, then the settings and parameter counts of ``summary``."""
    config, counts = summary["train_config"], summary["parameter_counts"]
    return banner(title, {
        **rows, "size": summary["size"], "resolution": summary["resolution"], "dataset": config["dataset_dir"],
        "output": config["output_dir"], "classes": ", ".join(summary["classes"]), "epochs": summary["epochs"],
        "device": summary["device"], "batch": summary["batch_size"], "accum": summary["grad_accum"],
        "effective batch": summary["batch_size"] * summary["grad_accum"], "workers": config["num_workers"],
        "lr": summary["lr"], "AMP": f"{summary['amp']} (CUDA only)", "multi-scale": config["multi_scale"],
        "expanded scales": config["expanded_scales"], "mask head": summary["mask_head"],
        "mask / dice loss coef": f"{summary['mask_loss_coef']} / {summary['dice_loss_coef']}",
        "detector params": f"{counts['detector_frozen']:,} frozen, {counts['detector_trainable']:,} trainable",
        "mask head params": f"{counts['mask_head_trainable']:,} trainable, {counts['mask_head_frozen']:,} frozen",
        "resume": config["resume"] or "no"})


def write_run_record(path: Path, summary: dict) -> None:
    """Write how the run started as JSON; a resumed run keeps the record it already has."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from rfdetr.config import TrainConfig
    from rfdetr.training.distributed import is_main_process
    from rfdetr.training.segmentation import load_stage2_detector, mask_run_summary, stage2_run

    def train():
        if model_overrides(args) or args.pretrain_exclude_keys:
            raise ValueError("--num_queries, --group_detr, --gradient_checkpointing and --pretrain_exclude_keys do "
                             "not apply to stage 2: the detector is the stage-1 checkpoint's, frozen")
        resume_file, resume_dir = resume_paths(args.resume)
        checkpoint = detector_checkpoint(args, resume_file)
        previous = previous_settings(resume_dir)
        overrides = train_overrides(args)
        if resume_file is not None:
            overrides["resume"] = str(resume_file)
            overrides.setdefault("output_dir", str(resume_dir))
        config = TrainConfig(**overrides)
        detector, model_config, classes = load_stage2_detector(checkpoint, config.dataset_dir, args.size)
        if "output_dir" not in overrides:
            resolution = config.resolution or model_config.resolution
            config.output_dir = str(next_run_dir(f"segmentation_{model_config.size}_{resolution}"))
        options = {"mask_head": previous.get("mask_head"), **mask_options(args)}
        trainer = stage2_run(detector, model_config, classes, config, **options)
        summary = mask_run_summary(trainer, stage=2,
                                   stage1_checkpoint=previous.get("stage1_checkpoint", str(checkpoint)))
        if is_main_process():
            print(run_banner("RT-DETR-Seg stage 2: mask head on the frozen detector",
                             summary, {"stage-1 checkpoint": summary["stage1_checkpoint"]}))
            write_run_record(Path(config.output_dir) / CONFIG_FILE, summary)
        return trainer.fit()

    return run_training(train, "segm")


if __name__ == "__main__":
    sys.exit(main())
