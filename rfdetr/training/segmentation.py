"""Mask-head training runs: stage 2 (on a frozen stage-1 detector) and single-stage (joint).

Stage 2 loads the detector *strictly* from a stage-1 checkpoint (a missing detector key is an
error, never a silently random detector), checks that its class table is the dataset's, wraps it in
:class:`~rfdetr.models.segmentation.DETRsegm` with ``freeze_detr=True`` and trains only the mask
head. The best checkpoint and early stopping follow ``segm`` AP. Checkpoints hold the whole model
(``detr.*`` + mask head) and ``"masks": {"mask_head": ...}``, so ``RFDETRNano(pretrain_weights=...)``
rebuilds it with masks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal, Mapping, Sequence

from rfdetr.checkpoint import CheckpointError, checkpoint_class_table, checkpoint_size, load_state_dict, read_checkpoint
from rfdetr.classes import ClassTable
from rfdetr.coco_masks import count_masks
from rfdetr.config import ModelConfig, TrainConfig, model_config
from rfdetr.datasets.coco import ANNOTATION_FILE, dataset_classes, load_annotation_file, resolve_split_dir
from rfdetr.models import DETRsegm, build_criterion, build_detector
from rfdetr.models.mask_losses import add_mask_losses
from rfdetr.training.engine import unwrap
from rfdetr.training.trainer import Trainer, TrainResult

logger = logging.getLogger(__name__)

MaskHeadName = Literal["small", "nano"]


def default_mask_head(size: str) -> MaskHeadName:
    """The lighter head for nano, the DETR-style head for the other sizes."""
    return "nano" if size == "nano" else "small"


def detector_state(state: Mapping) -> dict:
    """The detector part of a state dict: stage-2 files keep it under ``detr.``, stage-1 files bare."""
    if any(key.startswith("detr.") for key in state):
        return {key[len("detr."):]: value for key, value in state.items() if key.startswith("detr.")}
    return dict(state)


def load_frozen_detector(path: str | os.PathLike, classes: ClassTable, size: str | None = None):
    """``(detector, config)`` from a stage-1 (or stage-2) checkpoint whose classes are ``classes``."""
    checkpoint = read_checkpoint(path)
    stored = checkpoint_class_table(checkpoint)
    found = checkpoint_size(checkpoint)
    size = size or found
    if found is not None and size != found:
        raise CheckpointError(f"{path} is a {found} checkpoint, not {size}; pass --size {found}")
    if stored is None or stored.names != classes.names or stored.num_rows != classes.num_rows:
        raise CheckpointError(
            f"the detector in {path} has classes {stored.describe() if stored else 'unknown'} but the dataset has "
            f"{classes.describe()}. Train the detector on this dataset first (python train_detector_stage1.py "
            f"--size {size} --dataset_dir ...), or cut a COCO checkpoint down to the dataset's classes with "
            f"python shrink_head.py --in_ckpt {path} --out_ckpt detector.pth --keep {' '.join(classes.names)}")
    saved = {k: v for k, v in checkpoint.get("config", {}).items() if k not in ("size", "num_classes")}
    config = model_config(size, **{**saved, "num_classes": classes.num_rows - 1, "pretrain_weights": os.fspath(path)})
    detector = build_detector(config)
    load_state_dict(detector, detector_state(checkpoint["model"]), source=str(path), size=found)  # strict
    return detector, config


def check_segmentation(dataset_dir: str) -> int:
    """Number of training annotations with a usable mask (:mod:`rfdetr.coco_masks`); an error if there is none.

    The others are box-only: a logged warning counts them by reason (they add no mask loss).
    """
    path = resolve_split_dir(dataset_dir, "train") / ANNOTATION_FILE
    counts = count_masks(load_annotation_file(path))
    usable = counts.pop(None, 0)
    if usable == 0:
        raise ValueError(f"{path} has no segmentation usable as a mask: mask training needs polygons or RLE "
                         "(check with: python validate_setup.py --dataset_dir ... --stage 2)")
    if counts:
        logger.warning("%s: %d of %d annotations have no usable mask and train boxes only (%s)", path,
                       sum(counts.values()), usable + sum(counts.values()),
                       "; ".join(f"{reason}: {count}" for reason, count in counts.most_common()))
    return usable


def build_mask_run(detector, config: ModelConfig, classes: ClassTable, train_config: TrainConfig, *,
                   freeze_detr: bool, mask_head: MaskHeadName, mask_loss_coef: float = 1.0,
                   dice_loss_coef: float = 1.0) -> Trainer:
    """The trainer of a DETRsegm around ``detector`` (frozen for stage 2, trained for single-stage)."""
    check_segmentation(train_config.dataset_dir)
    model = DETRsegm(detector, freeze_detr=freeze_detr, mask_head=mask_head)
    # A frozen detector runs in eval mode: one query group, and its aux/encoder outputs train nothing.
    criterion = build_criterion(
        num_classes=config.num_classes, group_detr=1 if freeze_detr else config.group_detr,
        aux_loss=config.aux_loss and not freeze_detr, dec_layers=config.dec_layers,
        cls_loss_coef=train_config.cls_loss_coef, bbox_loss_coef=train_config.bbox_loss_coef,
        giou_loss_coef=train_config.giou_loss_coef, set_cost_class=train_config.set_cost_class,
        set_cost_bbox=train_config.set_cost_bbox, set_cost_giou=train_config.set_cost_giou,
        focal_alpha=train_config.focal_alpha)
    add_mask_losses(criterion, model, mask_loss_coef, dice_loss_coef)
    extra = {"masks": {"mask_head": mask_head, "frozen_detector": freeze_detr}}
    return Trainer(model, config, classes, train_config, criterion=criterion, masks=True, select_on="segm",
                   checkpoint_extra=extra)


def parameter_counts(model) -> dict[str, int]:
    """Frozen and trainable parameters of the detector and of the mask head."""
    counts = {"detector_frozen": 0, "detector_trainable": 0, "mask_head_frozen": 0, "mask_head_trainable": 0}
    for name, parameter in model.named_parameters():
        part = "detector" if name.startswith("detr.") else "mask_head"
        counts[f"{part}_{'trainable' if parameter.requires_grad else 'frozen'}"] += parameter.numel()
    return counts


def train_stage2(checkpoint: str | os.PathLike, train_config: TrainConfig, *, size: str | None = None,
                 mask_head: MaskHeadName | None = None, mask_loss_coef: float = 1.0,
                 dice_loss_coef: float = 1.0) -> TrainResult:
    """Train a mask head on the frozen detector of ``checkpoint``."""
    classes = dataset_classes(train_config.dataset_dir)
    detector, config = load_frozen_detector(checkpoint, classes, size)
    trainer = build_mask_run(detector, config, classes, train_config, freeze_detr=True,
                             mask_head=mask_head or default_mask_head(config.size), mask_loss_coef=mask_loss_coef,
                             dice_loss_coef=dice_loss_coef)
    return trainer.fit()


# ---- entry points of the root scripts: build the run (so it can be reported), then fit ------------
# Where a stage-1 run folder keeps its detector, best first; the last four are the fork's names.
STAGE1_CHECKPOINT_NAMES = ("checkpoint_best_total.pth", "checkpoint_best_regular.pth", "checkpoint_best_ema.pth",
                           "checkpoint.pth", "best.pth", "best.pt", "last.pth", "last.pt")


def find_stage1_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The detector checkpoint of a stage-1 run folder (the first of :data:`STAGE1_CHECKPOINT_NAMES`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"stage-1 run folder {run_dir} does not exist")
    for name in STAGE1_CHECKPOINT_NAMES:
        if (run_dir / name).is_file():
            return run_dir / name
    raise FileNotFoundError(f"{run_dir} holds no detector checkpoint (looked for "
                            f"{', '.join(STAGE1_CHECKPOINT_NAMES)}); pass the file with --checkpoint")


def load_stage2_detector(checkpoint: str | os.PathLike, dataset_dir: str, size: str | None = None):
    """``(detector, config, classes)``: the frozen detector of ``checkpoint`` for a dataset with masks.

    Fails early: no segmentation in the dataset, a file that does not say its size when ``size`` is
    not given, or a detector with other classes (the message says which script makes a fitting one).
    """
    check_segmentation(dataset_dir)
    classes = dataset_classes(dataset_dir)
    if size is None and checkpoint_size(read_checkpoint(checkpoint)) is None:
        raise CheckpointError(f"{checkpoint} does not say which model size it is: pass --size")
    detector, config = load_frozen_detector(checkpoint, classes, size)
    return detector, config, classes


def stage2_run(detector, config: ModelConfig, classes: ClassTable, train_config: TrainConfig, *,
               mask_head: MaskHeadName | None = None, mask_loss_coef: float = 1.0,
               dice_loss_coef: float = 1.0) -> Trainer:
    """The stage-2 trainer around a detector from :func:`load_stage2_detector` (mask head: the size's default)."""
    return build_mask_run(detector, config, classes, train_config, freeze_detr=True,
                          mask_head=mask_head or default_mask_head(config.size), mask_loss_coef=mask_loss_coef,
                          dice_loss_coef=dice_loss_coef)


def single_stage_run(train_config: TrainConfig, *, size: str, pretrain_weights: str | os.PathLike | None,
                     pretrain_exclude_keys: Sequence[str] = (), model_overrides: Mapping | None = None,
                     mask_head: MaskHeadName | None = None, mask_loss_coef: float = 1.0,
                     dice_loss_coef: float = 1.0) -> Trainer:
    """The trainer of a detector and mask head trained together (nothing frozen).

    The detector is built for the dataset's classes from ``pretrain_weights`` (a COCO checkpoint
    name, a file, or ``None`` for random weights): every tensor loads strictly except the class
    heads, which are kept only when the file has the dataset's classes (e.g. a stage-1 checkpoint).
    """
    from rfdetr.detr import RFDETR  # the wrapper is where checkpoints meet class tables

    check_segmentation(train_config.dataset_dir)
    classes = dataset_classes(train_config.dataset_dir)
    wrapper = RFDETR(size, pretrain_weights=pretrain_weights, class_names=classes,
                     pretrain_exclude_keys=pretrain_exclude_keys, device=train_config.device,
                     **dict(model_overrides or {}))
    return build_mask_run(wrapper.model, wrapper.config, wrapper.classes, train_config, freeze_detr=False,
                          mask_head=mask_head or default_mask_head(size), mask_loss_coef=mask_loss_coef,
                          dice_loss_coef=dice_loss_coef)


def train_single_stage(train_config: TrainConfig, **options) -> TrainResult:
    """Train detector and mask head jointly; ``options`` are :func:`single_stage_run`'s."""
    return single_stage_run(train_config, **options).fit()


def mask_run_summary(trainer: Trainer, *, stage: str | int, **fields) -> dict:
    """What a mask run's ``<stage>_config.json`` records: settings, classes, parameter counts, TrainConfig."""
    config = trainer.config
    return {"stage": stage, "size": trainer.model_config.size, "resolution": trainer.resolution, **fields,
            "epochs": config.epochs, "batch_size": config.batch_size, "grad_accum": config.grad_accum_steps,
            "lr": config.lr, "amp": config.amp, "device": str(trainer.device), "classes": trainer.classes.names,
            "mask_head": trainer.checkpoint_extra["masks"]["mask_head"],
            "mask_loss_coef": trainer.criterion.weight_dict["loss_mask"],
            "dice_loss_coef": trainer.criterion.weight_dict["loss_dice"],
            "parameter_counts": parameter_counts(unwrap(trainer.model)),
            "train_config": config.model_dump()}
