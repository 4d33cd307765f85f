"""Checkpoint surgery on class heads: re-slice their rows for other classes, or remove them.

Everything here works on state dicts and checkpoint dicts (see :mod:`rfdetr.checkpoints.files`) of
every kind the project reads: upstream and our detector files (bare keys) and mask-model files
(detector keys under ``detr.``). It touches exactly the class-head tensors
(:data:`~rfdetr.checkpoints.files.CLASS_HEAD_PATTERNS`) of the model and, if present, of the EMA model.
Optimizer and scheduler state refer to the old heads, so they are dropped.

Which old row serves which new row is decided by :func:`rfdetr.classes.match_rows`, the same
rule for ``shrink_head.py``, the wrappers, stage 1 and stage 2.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch

from rfdetr.checkpoints.files import (
    CheckpointError,
    checkpoint_class_table,
    class_head_rows,
    detector_state,
    is_class_head_key,
)
from rfdetr.classes import ClassTable, match_rows
from rfdetr.models.lwdetr import CLASS_PRIOR_BIAS

logger = logging.getLogger(__name__)

_STATE_KEYS = ("model", "ema_model")
_TRAINING_STATE = ("optimizer", "lr_scheduler", "scaler")


def select_class_rows(state: Mapping[str, torch.Tensor], rows: Sequence[int | None]) -> dict:
    """A copy of ``state`` whose class heads have the rows ``rows`` of the old ones, in that order.

    ``None`` makes a fresh spare row: zero weights and the class prior bias, so it starts like a
    newly initialised row that is never a positive target. Other tensors are shared, not copied.
    """
    heads = [key for key in state if is_class_head_key(key)]
    if not heads:
        raise CheckpointError("the checkpoint has no class heads to re-slice (were they stripped?)")
    result = dict(state)
    for key in heads:
        old = state[key]
        fresh = torch.full_like(old[:1], CLASS_PRIOR_BIAS) if old.dim() == 1 else torch.zeros_like(old[:1])
        result[key] = torch.cat([fresh if row is None else old[row:row + 1] for row in rows])
    return result


def fit_class_heads(state: Mapping[str, torch.Tensor], source: ClassTable, target: ClassTable,
                    origin: str = "the checkpoint") -> dict | None:
    """``state`` with class heads re-sliced for ``target``'s classes, or ``None`` when some have no row.

    Rows are matched by :func:`~rfdetr.classes.match_rows`; a ``None`` result is logged as a
    WARNING naming the classes without a trained row (the caller then rebuilds the heads).
    """
    match = match_rows(source, target)
    if match.rows is None:
        logger.warning("%s has no trained class-head row for %s (its classes: %s): the class heads are "
                       "re-initialised", origin, list(match.missing), source.describe())
        return None
    if match.is_identity and source.num_rows == target.num_rows:
        return dict(state)
    logger.info("class heads of %s re-sliced by %s: %s -> %s", origin, match.by, source.describe(), target.describe())
    return select_class_rows(state, match.rows)


def shrink_class_heads(checkpoint: Mapping, keep: Sequence[str]) -> dict:
    """A copy of ``checkpoint`` whose class heads hold only the ``keep`` classes (in that order) + a spare row.

    The classes are looked up in the stored class table (the COCO names for 91-row checkpoints).
    Unknown or repeated names raise ``ValueError`` listing the valid names; a checkpoint without
    class heads raises :class:`~rfdetr.checkpoints.files.CheckpointError`. The result is checked before
    it is returned, so a caller writes nothing that would not load.
    """
    table = checkpoint_class_table(checkpoint)
    if table is None:
        raise CheckpointError("the checkpoint has no class heads to shrink (were they stripped?)")
    new_table, rows = table.subset(list(keep))
    result = {k: v for k, v in checkpoint.items() if k not in _TRAINING_STATE}
    for state_key in _STATE_KEYS:
        if state_key in checkpoint:
            result[state_key] = select_class_rows(checkpoint[state_key], rows)
    result["classes"] = new_table.to_dict()
    for config_key in ("config", "model_config"):  # ours; upstream's from 1.7
        if isinstance(checkpoint.get(config_key), Mapping):
            result[config_key] = {**checkpoint[config_key], "num_classes": new_table.num_rows - 1}
    for state_key in _STATE_KEYS:
        wrong = [k for k, v in result.get(state_key, {}).items() if is_class_head_key(k) and v.shape[0] != len(rows)]
        if wrong:
            raise CheckpointError(f"shrinking left {len(wrong)} class-head tensors with another row count: {wrong[:3]}")
    return result


def strip_class_heads(checkpoint: Mapping) -> dict:
    """A copy of ``checkpoint`` without any class-head tensor (and without a class table).

    A checkpoint that has no class head to remove raises :class:`~rfdetr.checkpoints.files.CheckpointError`.
    """
    if not any(is_class_head_key(k) for k in checkpoint["model"]):
        raise CheckpointError("the checkpoint has no class heads to remove (it is already stripped)")
    result = {k: v for k, v in checkpoint.items() if k not in _TRAINING_STATE and k != "classes"}
    for state_key in _STATE_KEYS:
        if state_key in checkpoint:
            result[state_key] = {k: v for k, v in checkpoint[state_key].items() if not is_class_head_key(k)}
    return result


def head_rows(checkpoint: Mapping) -> int:
    """Rows of the checkpoint's class heads (all of them agree, or it is refused)."""
    rows = class_head_rows(detector_state(checkpoint["model"]))
    if rows is None:
        raise CheckpointError("the checkpoint has no class head (class_embed.bias); it was stripped")
    return rows
