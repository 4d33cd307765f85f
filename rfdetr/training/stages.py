"""One builder for every training run, whatever its stage (:attr:`rfdetr.config.RunConfig.stage`).

- ``"detector"`` (stage 1): the detector for the dataset's classes from pretrained weights (its
  class heads keep every trained row the dataset's classes have, see :mod:`rfdetr.checkpoints.loading`);
- ``"masks"`` (stage 2): a mask head on the frozen detector of a stage-1 checkpoint, which must
  have a trained row for every class of the dataset; only the mask head trains, segm AP selects;
- ``"joint"`` (single stage): detector and mask head trained together from pretrained weights.

:func:`start_run` builds a new run from initial weights, :func:`resume_run` rebuilds one from the
:class:`~rfdetr.config.RunConfig` its checkpoint stores, and :func:`build_trainer` makes the
criterion and trainer around a model already in hand (``RFDETR.train()``). The root scripts, the
wrappers and the demo all go through here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from rfdetr.checkpoints.files import read_checkpoint, stored_run_config
from rfdetr.checkpoints.loading import load_model
from rfdetr.classes import ClassTable
from rfdetr.config import BUILT_IN_MASK_HEAD, RunConfig, StageName, TrainConfig, mask_config
from rfdetr.datasets.coco_masks import count_masks
from rfdetr.datasets.splits import dataset_classes, load_split
from rfdetr.models import DETRsegm, build_criterion, build_detector
from rfdetr.models.mask_losses import add_mask_losses
from rfdetr.training.trainer import Trainer, seed_everything

logger = logging.getLogger(__name__)

# Where a stage-1 run folder keeps its detector, best first; the last four are the fork's names.
STAGE1_CHECKPOINT_NAMES = ("checkpoint_best_total.pth", "checkpoint_best_regular.pth", "checkpoint_best_ema.pth",
                           "checkpoint.pth", "best.pth", "best.pt", "last.pth", "last.pt")


def start_run(stage: StageName, size: str | None, train: TrainConfig, *, weights: str | os.PathLike | None,
              exclude: Sequence[str] = (), model_overrides: Mapping[str, Any] | None = None,
              mask_options: Mapping[str, Any] | None = None, name_run_dir: bool = False) -> Trainer:
    """A new run: the model of ``stage`` from ``weights`` (``None``: random), for the dataset's classes.

    size: the model size (``None``: the one the checkpoint records); exclude: checkpoint key patterns
    not to load; model_overrides: :class:`~rfdetr.config.ModelConfig` fields; mask_options:
    :class:`~rfdetr.config.MaskConfig` fields of a ``"masks"`` / ``"joint"`` run (the stage decides
    whether the detector is frozen); name_run_dir: write into the next free
    ``runs/<kind>_<size>_<resolution>_<n>`` instead of ``train.output_dir``.
    """
    classes = dataset_classes(train.dataset_dir)
    if stage != "detector":
        check_segmentation(train.dataset_dir)
    if stage == "masks":
        if weights is None:
            raise ValueError("stage 2 needs the stage-1 detector: --stage1_run RUN_FOLDER or --checkpoint FILE")
        refuse_detector_options(model_overrides, exclude, weights)
    seed_everything(train.seed)  # new layers (heads, a random-init model) start the same in every run
    # Single stage keeps a segmentation size's built-in mask head; otherwise the head is a new DETRsegm one.
    loaded = load_model(size, weights, class_names=classes, exclude=exclude, masks=False,
                        keep_built_in_head=stage == "joint", require_trained_heads=stage == "masks",
                        config_overrides=model_overrides)
    if name_run_dir:
        resolution = train.resolution or loaded.config.resolution
        train = train.model_copy(update={"output_dir": default_run_dir(stage, loaded.config.size, resolution)})
    mask = None if stage == "detector" else mask_config(loaded.config.size, built_in=loaded.config.segmentation_head,
                                                        frozen_detector=stage == "masks", **dict(mask_options or {}))
    run = RunConfig(model=loaded.config, train=train, mask=mask)
    model = _with_mask_head(loaded.model, run)  # a new mask head is seeded too (above)
    return build_trainer(run, model, classes)


def refuse_detector_options(model_overrides: Mapping[str, Any] | None, exclude: Sequence[str],
                            weights: str | os.PathLike | None = None) -> None:
    """Stage 2 takes its detector as the checkpoint has it: model overrides and exclusions are an error."""
    if model_overrides or exclude:
        source = f"{os.fspath(weights)}'s" if weights is not None else "the stage-1 checkpoint's"
        raise ValueError("--num_queries, --group_detr, --gradient_checkpointing and --pretrain_exclude_keys do "
                         f"not apply to stage 2: the detector is {source}, frozen, loaded as the file has it")


def resume_run(checkpoint_path: str | os.PathLike, train_overrides: Mapping[str, Any]) -> tuple[Trainer, dict]:
    """Continue the run of ``checkpoint_path`` as its stored :class:`RunConfig` says.

    ``train_overrides``: :class:`TrainConfig` fields given explicitly (they win, e.g. more epochs).
    Returns the trainer and ``{field: (stored, new)}`` for every override that changed a value.
    """
    checkpoint = read_checkpoint(checkpoint_path)
    run = stored_run_config(checkpoint, str(checkpoint_path))
    stored = run.train.model_dump()
    fields = {**stored, "output_dir": str(Path(checkpoint_path).parent), **train_overrides,
              "resume": os.fspath(checkpoint_path)}
    changed = {k: (stored.get(k), v) for k, v in train_overrides.items() if stored.get(k) != v}
    run = run.model_copy(update={"train": TrainConfig(**fields)})
    classes = ClassTable.from_dict(checkpoint["classes"])
    model = _with_mask_head(build_detector(run.model), run)  # the weights come from the checkpoint
    return build_trainer(run, model, classes), changed


def build_trainer(run: RunConfig, model: nn.Module, classes: ClassTable) -> Trainer:
    """The trainer of ``model`` (a detector, a ``DETRsegm`` for mask stages, or a detector with a built-in
    mask head) as ``run`` describes."""
    if run.mask is None:
        return Trainer(model, run, classes)
    criterion = build_criterion(run.model, run.train, frozen_detector=run.mask.frozen_detector)
    # A built-in head masks every decoder layer (the earlier ones train through their aux losses too).
    every_layer = run.mask.mask_head == BUILT_IN_MASK_HEAD and run.model.aux_loss
    suffixes = [f"_{layer}" for layer in range(run.model.dec_layers - 1)] if every_layer else []
    add_mask_losses(criterion, run.mask.mask_loss_coef, run.mask.dice_loss_coef, suffixes=suffixes)
    return Trainer(model, run, classes, criterion=criterion)


def _with_mask_head(detector: nn.Module, run: RunConfig) -> nn.Module:
    if run.mask is None or run.mask.mask_head == BUILT_IN_MASK_HEAD:
        return detector
    return DETRsegm(detector, freeze_detr=run.mask.frozen_detector, mask_head=run.mask.mask_head)


def check_segmentation(dataset_dir: str) -> int:
    """Number of training annotations with a usable mask (:mod:`rfdetr.datasets.coco_masks`); an error if there is none.

    The others are box-only: a logged warning counts them by reason (they add no mask loss).
    """
    train = load_split(dataset_dir, "train")  # a COCO or YOLO folder
    path, counts = train.path, count_masks(train.document)
    usable = counts.pop(None, 0)
    if usable == 0:
        raise ValueError(f"{path} has no segmentation usable as a mask: mask training needs polygons or RLE "
                         "(check with: python validate_setup.py --dataset_dir ... --stage 2)")
    if counts:
        logger.warning("%s: %d of %d annotations have no usable mask and train boxes only (%s)", path,
                       sum(counts.values()), usable + sum(counts.values()),
                       "; ".join(f"{reason}: {count}" for reason, count in counts.most_common()))
    return usable


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


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Frozen and trainable parameter tensors and elements of the detector and of the mask head."""
    counts = {f"{part}_{state}{unit}": 0 for part in ("detector", "mask_head") for state in ("frozen", "trainable")
              for unit in ("", "_tensors")}
    wrapped = isinstance(model, DETRsegm)
    for name, parameter in model.named_parameters():
        in_head = not name.startswith("detr.") if wrapped else name.startswith("segmentation_head.")
        key = f"{'mask_head' if in_head else 'detector'}_{'trainable' if parameter.requires_grad else 'frozen'}"
        counts[key] += parameter.numel()
        counts[f"{key}_tensors"] += 1
    return counts


def run_summary(trainer: Trainer, **fields: Any) -> dict:
    """What a run's ``<stage>_config.json`` records: settings, classes, parameter counts, the run config."""
    from rfdetr.training.engine import unwrap

    run, config = trainer.run, trainer.config
    summary = {"stage": run.stage, "size": run.model.size, "resolution": trainer.resolution, **fields,
               "epochs": config.epochs, "batch_size": config.batch_size, "grad_accum": config.grad_accum_steps,
               "lr": config.lr, "amp": config.amp, "device": str(trainer.device), "classes": trainer.classes.names,
               "train_config": config.model_dump()}
    if run.mask is not None:
        summary.update(mask_head=run.mask.mask_head, mask_loss_coef=run.mask.mask_loss_coef,
                       dice_loss_coef=run.mask.dice_loss_coef, parameter_counts=parameter_counts(unwrap(trainer.model)))
    return summary


def default_run_dir(stage: StageName, size: str, resolution: int) -> str:
    """``runs/<kind>_<size>_<resolution>_<n>`` for a new run (the first ``n`` not taken)."""
    kind = {"detector": "detector", "masks": "segmentation", "joint": "seg_single"}[stage]
    n = 1
    while (Path("runs") / f"{kind}_{size}_{resolution}_{n}").exists():
        n += 1
    return str(Path("runs") / f"{kind}_{size}_{resolution}_{n}")
