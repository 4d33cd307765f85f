"""A model from a checkpoint: the one place where weights, class tables and geometry meet.

:func:`load_model` reads pretrained weights (a table name, a file, or ``None`` for random
weights), checks the size, decides the model's classes, fits the class heads to them, builds the
detector with the stored geometry (explicit overrides win) and, for a mask checkpoint, wraps it
with its mask head. The user wrappers (:mod:`rfdetr.api`) and the run builder
(:mod:`rfdetr.training.stages`) both call it.

Which classes a model has:
``class_names`` given -> those names (a dataset's :class:`~rfdetr.classes.ClassTable` keeps its
category ids; names that are all in the checkpoint keep the checkpoint's category ids);
``num_classes`` given -> that many classes (the checkpoint's if its head has that size);
otherwise -> the checkpoint's classes (the COCO table for random weights; a checkpoint without
class heads is then an error). The checkpoint's trained head rows are kept for every class it
has, in any order or subset (:func:`rfdetr.checkpoints.surgery.fit_class_heads`); only when some class has
no trained row are the heads rebuilt (a WARNING names those classes), or, with
``require_trained_heads``, refused.

Given a ``device``, the model is moved there and put on that device's speed paths
(:func:`rfdetr.accel.accelerate`, for ``dtype``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from rfdetr.accel import accelerate
from rfdetr.checkpoints.files import (
    CLASS_HEAD_PATTERNS,
    DETECTOR_PREFIX,
    CheckpointError,
    checkpoint_class_table,
    checkpoint_size,
    detector_state,
    load_state_dict,
    read_checkpoint,
    stored_upstream_geometry,
)
from rfdetr.checkpoints.surgery import fit_class_heads
from rfdetr.checkpoints.upstream import PredictStyle, predict_style
from rfdetr.classes import ClassTable
from rfdetr.config import (
    BUILT_IN_MASK_HEAD,
    RETIRED_MODEL_FIELDS,
    SIZE_PRESETS,
    MaskConfig,
    ModelConfig,
    mask_config,
    model_config,
    wrapper_name,
)
from rfdetr.models import DETRsegm, build_detector

logger = logging.getLogger(__name__)

# Stored model-config fields that the caller's choice of size, classes and weights decides.
_DECIDED_HERE = ("size", "num_classes", "pretrain_weights")


@dataclass
class LoadedModel:
    """model: the detector, or a ``DETRsegm`` around it (``mask`` set); checkpoint: the file read (or None);
    style: how predict treats images and boxes for this file (its upstream release's way)."""

    model: nn.Module
    config: ModelConfig
    classes: ClassTable
    mask: MaskConfig | None
    checkpoint: dict | None
    style: PredictStyle = PredictStyle()

    @property
    def has_masks(self) -> bool:
        """Whether the model predicts masks: a ``DETRsegm`` or a detector with upstream's built-in mask head."""
        return self.mask is not None or self.config.segmentation_head


def read_weights(pretrain_weights: str | os.PathLike) -> dict:
    """The checkpoint of a table name (downloaded if needed, read as trusted) or of a file path."""
    from rfdetr.checkpoints.download import is_pretrained_name, resolve_weights

    return read_checkpoint(resolve_weights(pretrain_weights), trusted=is_pretrained_name(pretrain_weights))


def stored_mask_config(checkpoint: Mapping | None, size: str | None = None) -> MaskConfig | None:
    """The mask head a checkpoint was trained with (``None`` for a detector checkpoint).

    A file whose weights hold a mask head (tensors beside the ``detr.`` detector) but no ``masks``
    record (a bare state dict, another tool's file) is taken to have ``size``'s default head.
    """
    stored = (checkpoint or {}).get("masks")
    if not stored:
        state = (checkpoint or {}).get("model", {})
        detector = [k for k in state if k.startswith(DETECTOR_PREFIX)]
        if size is None or not detector or len(detector) == len(state):
            return None
        return mask_config(size)
    known = set(MaskConfig.model_fields)
    return MaskConfig(**{k: v for k, v in stored.items() if k in known})


def load_model(size: str | None, pretrain_weights: str | os.PathLike | None, *, num_classes: int | None = None,
               class_names: Sequence[str] | ClassTable | None = None, exclude: Sequence[str] = (),
               masks: bool | None = None, mask_head: str | None = None, require_trained_heads: bool = False,
               keep_built_in_head: bool = False, config_overrides: Mapping[str, Any] | None = None,
               device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Build the model of ``size`` from ``pretrain_weights`` (see the module docstring for the classes).

    size: ``None`` takes the size the checkpoint records (an error when it records none);
    exclude: fnmatch patterns of checkpoint keys not to load; masks: wrap the detector with a mask
    head (``None``: when the checkpoint has one; ``False`` also drops a segmentation size's built-in head,
    unless ``keep_built_in_head``); mask_head: its kind (default: the checkpoint's, else the size's);
    config_overrides: :class:`ModelConfig` fields that win over the stored ones.
    """
    origin = os.fspath(pretrain_weights) if pretrain_weights is not None else "no checkpoint"
    if size is None and pretrain_weights is None:
        raise ValueError("a model without a checkpoint needs a size")
    checkpoint = read_weights(pretrain_weights) if pretrain_weights is not None else None
    stored = None
    if checkpoint is not None:
        found = checkpoint_size(checkpoint, origin)
        if size is None and found is None:
            raise CheckpointError(f"{origin} does not say which model size it is: name it, e.g. "
                                  "RFDETRNano(pretrain_weights=...) in Python or --size nano on the command line")
        size = size or found
        if found is not None and found != size:
            raise CheckpointError(f"{origin} is a {found} checkpoint but this is a {size} model; "
                                  f"use {wrapper_name(found)} or --size {found} (or pass a {size} checkpoint)")
        stored = checkpoint_class_table(checkpoint, origin)
        if stored is None and (require_trained_heads or (num_classes is None and class_names is None)):
            raise CheckpointError(f"{origin} has no class heads (it was stripped): say which classes the model "
                                  "should have, class_names=[...] or num_classes=N, and the heads are built fresh")
    classes = choose_classes(stored, num_classes, class_names)
    # Our checkpoints and upstream's from 1.7 carry their model config: its geometry is the default,
    # explicit overrides win.
    upstream = stored_upstream_geometry(checkpoint, origin) if checkpoint is not None else None
    saved = {k: v for k, v in ((checkpoint or {}).get("config") or (upstream or (None, {}))[1]).items()
             if k not in _DECIDED_HERE and k not in RETIRED_MODEL_FIELDS}
    built_in = saved.get("segmentation_head", SIZE_PRESETS[size].get("segmentation_head"))
    if masks is False and not keep_built_in_head and built_in:
        logger.warning("%s has upstream's built-in mask head; masks=False drops it (the model is its detector)", origin)
        saved["segmentation_head"] = False
        exclude = [*exclude, "segmentation_head.*"]
    config = model_config(size, **{**saved, "num_classes": classes.num_rows - 1,
                                   "pretrain_weights": None if pretrain_weights is None else origin,
                                   **dict(config_overrides or {})})
    detector = build_detector(config)
    if checkpoint is not None:
        state = detector_state(checkpoint["model"])
        fitted = fit_class_heads(state, stored, classes, origin) if stored is not None else None
        if fitted is None and require_trained_heads:
            raise CheckpointError(
                f"the detector in {origin} has classes {stored.describe()} but the dataset has {classes.describe()}. "
                f"Train the detector on this dataset first (python train_detector_stage1.py --size {size} "
                f"--dataset_dir ...), or cut a COCO checkpoint down to the dataset's classes with python "
                f"shrink_head.py --in_ckpt {origin} --out_ckpt detector.pth --keep {' '.join(classes.names)}")
        heads = list(CLASS_HEAD_PATTERNS) if fitted is None else []
        load_state_dict(detector, state if fitted is None else fitted, exclude=[*exclude, *heads], source=origin,
                        size=checkpoint_size(checkpoint, origin))
    style = predict_style(checkpoint)
    mask = stored_mask_config(checkpoint, size)
    wrap = mask is not None if masks is None else masks
    if config.segmentation_head:  # the masks come from the detector itself
        if mask_head not in (None, BUILT_IN_MASK_HEAD) or (mask is not None and mask.mask_head != BUILT_IN_MASK_HEAD):
            raise CheckpointError(f"{origin}: a {size} model has upstream's built-in mask head; it takes no "
                                  "DETRsegm mask head (leave mask_head unset)")
        return _placed(LoadedModel(detector, config, classes, mask or mask_config(size, built_in=True), checkpoint,
                                   style), device, dtype)
    if not wrap:
        if mask is not None:
            logger.warning("%s has a %s mask head; masks=False drops it: the model is its detector alone, and "
                           "train() fine-tunes that detector", origin, mask.mask_head)
        return _placed(LoadedModel(detector, config, classes, None, checkpoint, style), device, dtype)
    mask = mask_config(size, mask_head=mask_head) if mask is None else (
        mask.model_copy(update={"mask_head": mask_head}) if mask_head else mask)
    model = DETRsegm(detector, freeze_detr=mask.frozen_detector, mask_head=mask.mask_head)
    _load_mask_head(model, checkpoint, origin)
    return _placed(LoadedModel(model, config, classes, mask, checkpoint, style), device, dtype)


def _placed(loaded: LoadedModel, device: str | torch.device | None, dtype: str | torch.dtype | None) -> LoadedModel:
    """``loaded`` with its model moved to ``device`` and accelerated there (unchanged for ``device=None``)."""
    if device is not None:
        accelerate(loaded.model.to(device), device, dtype)
    return loaded


def choose_classes(stored: ClassTable | None, num_classes: int | None,
                   class_names: Sequence[str] | ClassTable | None) -> ClassTable:
    """The model's class table from the checkpoint's (``stored``) and the caller's arguments."""
    if isinstance(class_names, ClassTable):  # a dataset's table (category ids included)
        if num_classes is not None and num_classes != class_names.num_rows - 1:
            raise ValueError(f"num_classes={num_classes} does not match the class table ({class_names.describe()})")
        return class_names
    if class_names is not None:
        names = list(class_names)
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"num_classes={num_classes} but {len(names)} class_names were given")
        if stored is not None and stored.names == names:
            return stored
        if stored is not None and set(names) <= set(stored.names):
            return stored.subset(names)[0]  # the checkpoint's classes, re-ordered or a subset
        return ClassTable.from_names(names)
    if num_classes is not None:  # as in the configs: the head has num_classes + 1 rows
        if stored is not None and stored.num_rows == num_classes + 1:
            return stored
        return ClassTable.placeholder(range(num_classes), num_rows=num_classes + 1)
    return stored if stored is not None else ClassTable.coco()


def _load_mask_head(model: DETRsegm, checkpoint: Mapping | None, origin: str) -> None:
    """The mask-head tensors of ``checkpoint`` into ``model`` (all of them, or none: a new head)."""
    state = {k: v for k, v in (checkpoint or {}).get("model", {}).items() if not k.startswith(DETECTOR_PREFIX)}
    if not state:
        logger.warning("%s: the mask head is randomly initialised (train it with train_seg_stage2.py)",
                       origin if checkpoint is None else f"{origin} has no mask head")
        return
    detector = {f"{DETECTOR_PREFIX}{k}": v for k, v in model.detr.state_dict().items()}
    result = model.load_state_dict(detector | state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{origin}: the mask head does not match (missing {result.missing_keys[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}); pass mask_head= as it was trained")
