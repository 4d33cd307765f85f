"""The three training commands: stage 1 (detector), stage 2 (masks on the frozen detector), single stage.

Each ``*_main(argv)`` parses its flags, starts a new run through :func:`rfdetr.training.stages.start_run`
or continues one with ``--resume RUN_DIR`` (:func:`~rfdetr.training.stages.resume_run`: size,
model, stage and settings come from the run's checkpoint; flags given with it override the stored
settings and each override is printed), prints a banner and trains. Exit codes: see
:func:`rfdetr.cli.common.run_training`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from rfdetr.cli.common import (
    MODEL_FLAGS,
    RunInterrupted,
    Terminated,
    add_training_flags,
    banner,
    command_doc,
    described,
    model_overrides,
    overrides_lines,
    raise_on_sigterm,
    refuse_on_resume,
    resume_checkpoint,
    run_training,
    split_patterns,
    train_overrides,
)
from rfdetr.config import DEFAULT_SCRIPT_SIZE, MASK_HEADS

STAGE1_DOC = """Stage 1: fine-tune the RF-DETR detector on a COCO or YOLO dataset, starting from the COCO checkpoint.

    {prog} --size nano --dataset_dir dataset --epochs 50 --batch 4 --accum 4
    {prog} --size nano --pretrain_weights none --device cpu   # random init, offline
    torchrun --nproc_per_node=2 train_detector_stage1.py --size small --batch 2     # several GPUs
    {prog} --resume runs/detector_nano_384_1                # continue exactly

The dataset folder holds train/, valid/ and optionally test/, each with _annotations.coco.json and
its images (a Roboflow COCO export), or is a YOLO folder (data.yaml, images/ and labels/; polygon
labels give the masks of the mask stages). The class heads take the dataset's classes (trained rows of the
checkpoint are kept for every class it has); the rest of the network starts from --pretrain_weights.
The run folder receives checkpoint.pth (resumable), checkpoint_best_regular.pth,
checkpoint_best_ema.pth, checkpoint_best_total.pth, log.txt, results.json, run_config.json and
TensorBoard scalars in tb/.
"""

STAGE2_DOC = """Stage 2: train a mask head on the frozen detector of a stage-1 run.

    {prog} --stage1_run runs/detector_nano_384_1 --epochs 50
    {prog} --size small --checkpoint detector.pth --batch 2 --accum 2
    {prog} --resume runs/segmentation_nano_384_1                  # continue exactly

The detector is loaded strictly from the stage-1 checkpoint (found in --stage1_run as
checkpoint_best_total.pth, checkpoint_best_regular.pth, checkpoint_best_ema.pth, checkpoint.pth,
or the fork's best.pth/best.pt/last.pth/last.pt) and needs a trained class-head row for every class
of the dataset (matched by name); it stays frozen (eval mode, no gradients) and only the mask head
trains. The best checkpoint follows segm AP. The run folder receives stage2_config.json (settings,
classes, frozen/trainable parameter counts), the checkpoints (``detr.*`` + mask head weights),
log.txt, results.json and TensorBoard scalars in tb/.
"""

SINGLE_STAGE_DOC = """Single stage: train the detector and a mask head together, starting from the COCO checkpoint.

    {prog} --size nano --epochs 50 --batch 1 --accum 8
    {prog} --size nano --init_ckpt runs/detector_nano_384_1/checkpoint_best_total.pth
    {prog} --resume runs/seg_single_nano_384_1                 # continue exactly
    {prog} --size seg-nano --init_ckpt upstream_1_11_seg.pth   # built-in mask head

The detector is built for the dataset's classes and loads --pretrain_weights (default: the size's
COCO checkpoint) strictly, all but the class rows the dataset has no class for; --init_ckpt starts
from another detector checkpoint instead. Nothing is frozen; the best checkpoint follows segm AP.
A segmentation size (seg-nano ..., upstream 1.11's models) trains the mask head built into its detector
(every decoder layer's masks, loss weights 5 and 5 as upstream) instead of adding one.
The run folder receives single_stage_config.json, the checkpoints (``detr.*`` + mask head
weights), log.txt, results.json and TensorBoard scalars in tb/.
"""

MASK_FLAGS = ("mask_head", "mask_loss_coef", "dice_loss_coef")
RECORD_FILES = {"masks": "stage2_config.json", "joint": "single_stage_config.json"}


def stage1_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = _parser(command_doc(STAGE1_DOC, prog, "train_detector_stage1.py"), prog)
    parser.add_argument("--pretrain_weights", default=None,
                        help="checkpoint name (rf-detr-<size>.pth, downloaded if needed), a path, or 'none' for "
                             "random init (default: the size's COCO checkpoint)")
    return parser


def stage2_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = _parser(command_doc(STAGE2_DOC, prog, "train_seg_stage2.py"), prog,
                     size_help="model size (default: the one recorded in the checkpoint)")
    parser.add_argument("--stage1_run", default=None, help="stage-1 run folder holding the detector checkpoint")
    parser.add_argument("--checkpoint", default=None, help="detector checkpoint file (wins over --stage1_run)")
    parser.add_argument("--seg_lr", dest="lr", type=float, default=None,
                        help=described("mask-head learning rate, same as --lr", "lr"))
    _add_mask_flags(parser)
    return parser


def single_stage_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = _parser(command_doc(SINGLE_STAGE_DOC, prog, "train_seg_single_stage.py"), prog,
                     size_help=f"model size (default: {DEFAULT_SCRIPT_SIZE['joint']})")
    parser.add_argument("--pretrain_weights", default=None,
                        help="checkpoint name (rf-detr-<size>.pth, downloaded if needed), a path, or 'none' for "
                             "random init (default: the size's COCO checkpoint)")
    parser.add_argument("--init_ckpt", default=None,
                        help="detector checkpoint to start from instead of --pretrain_weights (e.g. a stage-1 "
                             "run's checkpoint_best_total.pth; its trained class rows are kept)")
    _add_mask_flags(parser)
    return parser


def stage1_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = stage1_parser(prog).parse_args(argv)

    def new_run():
        size = args.size or DEFAULT_SCRIPT_SIZE["detector"]
        weights = _weights(args.pretrain_weights, size)
        return _start("detector", size, args, weights=weights, exclude=split_patterns(args.pretrain_exclude_keys),
                      model_overrides=model_overrides(args)), {"pretrained": weights or "none (random)"}

    return _train(args, new_run, ("size", "pretrain_weights", "pretrain_exclude_keys", *MODEL_FLAGS),
                  "RT-DETR-Seg stage 1: detector fine-tuning", "bbox", prog or "train_detector_stage1.py")


def stage2_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = stage2_parser(prog).parse_args(argv)

    def new_run():
        from rfdetr.training.stages import find_stage1_checkpoint, refuse_detector_options

        refuse_detector_options(model_overrides(args), split_patterns(args.pretrain_exclude_keys),
                                args.checkpoint or args.stage1_run)
        if args.checkpoint:
            checkpoint = Path(args.checkpoint)
            if not checkpoint.is_file():
                raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
        elif args.stage1_run:
            checkpoint = find_stage1_checkpoint(args.stage1_run)
        else:
            raise ValueError("pass the stage-1 detector: --stage1_run RUN_FOLDER or --checkpoint FILE")
        trainer = _start("masks", args.size, args, weights=checkpoint,
                         exclude=split_patterns(args.pretrain_exclude_keys), model_overrides=model_overrides(args),
                         mask_options=_mask_options(args))
        return trainer, {"stage-1 checkpoint": str(checkpoint)}

    return _train(args, new_run, ("size", "stage1_run", "checkpoint", *MASK_FLAGS, *MODEL_FLAGS,
                                  "pretrain_exclude_keys"), "RT-DETR-Seg stage 2: mask head on the frozen detector",
                  "segm", prog or "train_seg_stage2.py")


def single_stage_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = single_stage_parser(prog).parse_args(argv)

    def new_run():
        size = args.size or DEFAULT_SCRIPT_SIZE["joint"]
        if args.init_ckpt and args.pretrain_weights:
            raise ValueError("give --init_ckpt or --pretrain_weights, not both")
        weights = _weights(args.init_ckpt or args.pretrain_weights, size)
        trainer = _start("joint", size, args, weights=weights, exclude=split_patterns(args.pretrain_exclude_keys),
                         model_overrides=model_overrides(args), mask_options=_mask_options(args))
        return trainer, {"pretrained": weights or "none (random)"}

    return _train(args, new_run, ("size", "pretrain_weights", "init_ckpt", "pretrain_exclude_keys", *MASK_FLAGS,
                                  *MODEL_FLAGS), "RT-DETR-Seg single stage: detector + mask head", "segm",
                  prog or "train_seg_single_stage.py")


# ---- shared ---------------------------------------------------------------------------------------
def _parser(doc: str, prog: str | None, size_help: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_flags(parser, size_help)
    return parser


def _add_mask_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mask_head", choices=MASK_HEADS, default=None,
                        help="mask head architecture: light (MaskHeadNano) or detr (DETR's head) (default: light "
                             "for the nano size, detr otherwise)")
    parser.add_argument("--mask_loss_coef", type=float, default=None,
                        help=described("weight of the per-pixel mask loss, sigmoid BCE", "mask_loss_coef", "mask"))
    parser.add_argument("--dice_loss_coef", type=float, default=None,
                        help=described("weight of the Dice loss", "dice_loss_coef", "mask"))


def _mask_options(args: argparse.Namespace) -> dict[str, Any]:
    """MaskConfig fields for the mask flags the user gave."""
    return {flag: getattr(args, flag) for flag in MASK_FLAGS if getattr(args, flag) is not None}


def _weights(given: str | None, size: str) -> str | None:
    from rfdetr.config import PRETRAINED_NAMES

    weights = given or PRETRAINED_NAMES[size]
    return None if weights.lower() == "none" else weights


def _start(stage: str, size: str | None, args: argparse.Namespace, **options: Any):
    from rfdetr.config import TrainConfig
    from rfdetr.training.stages import start_run

    overrides = train_overrides(args)
    name_run = "output_dir" not in overrides
    return start_run(stage, size, TrainConfig(**overrides), name_run_dir=name_run, **options)


def _train(args: argparse.Namespace, new_run, fixed_on_resume: tuple[str, ...], title: str, metric: str,
           command: str) -> int:
    """Run ``new_run()`` (-> trainer, what it started from) or resume; ``fixed_on_resume``: flags refused then.
    ``command``: how the user started this run (a root script, or ``rfdetr train KIND``), for the resume hint."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def train():
        from rfdetr.training.distributed import is_main_process
        from rfdetr.training.stages import resume_run, run_summary
        from rfdetr.util.heap import retained_heap

        checkpoint = resume_checkpoint(args.resume)
        notes: list[str] = []
        if checkpoint is not None:
            refuse_on_resume(args, fixed_on_resume)
            trainer, changed = resume_run(checkpoint, train_overrides(args))
            rows, notes = {"resume": str(checkpoint)}, overrides_lines(changed)
        else:
            trainer, rows = new_run()
        summary = run_summary(trainer, started_from=rows)
        if is_main_process():
            print(banner(title, {**rows, **_banner_rows(trainer, summary)}))
            for line in notes:
                print(line)
            record = RECORD_FILES.get(trainer.run.stage)
            path = trainer.output_dir / record if record else None
            if path is not None and not path.is_file():  # the record of how the run started
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(summary, indent=2))
        try:
            # This process is ours: CPU steps keep their freed buffers in the heap (rfdetr.util.heap)
            with retained_heap(trainer.device.type == "cpu"):
                return trainer.fit()
        except KeyboardInterrupt:
            raise RunInterrupted(_resume_command(command, trainer.output_dir), "SIGINT", 130) from None
        except Terminated:
            raise RunInterrupted(_resume_command(command, trainer.output_dir), "SIGTERM", 143) from None
        except RuntimeError as error:
            if not _lost_a_peer(error):
                raise
            raise RunInterrupted(_resume_command(command, trainer.output_dir),
                                 f"another process of the run stopped: {str(error).splitlines()[0][:200]}", 1) from None

    with raise_on_sigterm():
        return run_training(train, metric)


def _lost_a_peer(error: RuntimeError) -> bool:
    """A collective failed because another process of a torchrun run is gone (its connection dropped)."""
    from rfdetr.training.distributed import world_size

    text = str(error)
    return world_size() > 1 and any(sign in text for sign in ("Connection reset by peer", "Connection closed by peer",
                                                             "Broken pipe", "NCCL communicator was aborted"))


def _resume_command(command: str, run_dir: Path) -> str:
    """The command line that continues this run: ``command`` is a root script (``train_detector_stage1.py``)
    or the ``rfdetr`` sub-command (``rfdetr train detector``), run as before by one process or by torchrun."""
    from rfdetr.training.distributed import world_size

    processes = world_size()
    script = command.endswith(".py")
    if processes > 1:  # torchrun starts a script, or a module: the rfdetr command's is rfdetr.cli.main
        command = command if script else "-m rfdetr.cli.main " + command.removeprefix("rfdetr ")
        return f"torchrun --nproc_per_node={processes} {command} --resume {run_dir}"
    return f"{'python ' if script else ''}{command} --resume {run_dir}"


def _banner_rows(trainer, summary: dict) -> dict[str, Any]:
    config, run = trainer.config, trainer.run
    rows = {"size": run.model.size, "resolution": trainer.resolution, "epochs": config.epochs,
            "device": str(trainer.device), "dataset": config.dataset_dir, "output": str(trainer.output_dir),
            "classes": ", ".join(trainer.classes.names), "batch": config.batch_size,
            "accum": config.grad_accum_steps, "effective batch": config.batch_size * config.grad_accum_steps,
            "workers": config.num_workers, "lr": config.lr, "AMP": f"{config.amp} (CUDA only)",
            "multi-scale": config.multi_scale, "expanded scales": config.expanded_scales, "EMA": config.use_ema,
            "early stopping": f"patience {config.early_stopping_patience}" if config.early_stopping else "off"}
    if run.mask is not None:
        counts = summary["parameter_counts"]
        rows.update({"mask head": run.mask.mask_head,
                     "mask / dice loss coef": f"{run.mask.mask_loss_coef} / {run.mask.dice_loss_coef}"})
        for part, name in (("detector", "detector params"), ("mask_head", "mask head params")):
            rows[name] = (f"{counts[f'{part}_frozen_tensors']} tensors ({counts[f'{part}_frozen']:,} elements) "
                          f"frozen, {counts[f'{part}_trainable_tensors']} tensors "
                          f"({counts[f'{part}_trainable']:,} elements) trainable")
    return rows
