"""Checkpoint surgery on class heads: keep some classes, or remove the heads altogether.

Both work on checkpoint dicts (see :mod:`rfdetr.checkpoint`) and touch exactly the class-head
tensors (:data:`~rfdetr.checkpoint.CLASS_HEAD_PATTERNS`) of the model and, if present, of the EMA
model. Optimizer and scheduler state refer to the old heads, so they are dropped.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from rfdetr.checkpoint import CheckpointError, checkpoint_class_table, class_rows_of, is_class_head_key

_STATE_KEYS = ("model", "ema_model")
_TRAINING_STATE = ("optimizer", "lr_scheduler", "scaler")


def shrink_class_heads(checkpoint: Mapping, keep: Sequence[str]) -> dict:
    """A copy of ``checkpoint`` whose class heads hold only the ``keep`` classes (in that order) + a spare row.

    The classes are looked up in the stored class table (the COCO names for 91-row checkpoints).
    Unknown or repeated names raise ``ValueError`` listing the valid names.
    """
    table = checkpoint_class_table(checkpoint)
    if table is None:
        raise CheckpointError("the checkpoint has no class heads to shrink (were they stripped?)")
    new_table, rows = table.subset(list(keep))
    index = torch.tensor(rows, dtype=torch.long)
    result = {k: v for k, v in checkpoint.items() if k not in _TRAINING_STATE}
    for state_key in _STATE_KEYS:
        if state_key in checkpoint:
            state = checkpoint[state_key]
            result[state_key] = {k: (v.index_select(0, index) if is_class_head_key(k) else v) for k, v in state.items()}
    result["classes"] = new_table.to_dict()
    if isinstance(checkpoint.get("config"), Mapping):
        result["config"] = {**checkpoint["config"], "num_classes": new_table.num_rows - 1}
    return result


def strip_class_heads(checkpoint: Mapping) -> dict:
    """A copy of ``checkpoint`` without any class-head tensor (and without a class table)."""
    result = {k: v for k, v in checkpoint.items() if k not in _TRAINING_STATE and k != "classes"}
    for state_key in _STATE_KEYS:
        if state_key in checkpoint:
            result[state_key] = {k: v for k, v in checkpoint[state_key].items() if not is_class_head_key(k)}
    return result


def head_rows(checkpoint: Mapping) -> int:
    """Rows of the checkpoint's final class head."""
    return class_rows_of(checkpoint["model"])
