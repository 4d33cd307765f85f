"""AdamW parameter groups (layer-wise ViT decay, decoder decay) and the learning-rate schedule.

Rules, on parameter names relative to the detector:

- ViT (``backbone.0.encoder``): ``lr_encoder * lr_vit_layer_decay ** (n + 1 - depth_id) *
  lr_component_decay ** 2`` with ``n = out_feature_indexes[-1] + 1``; ``depth_id`` is 0 for the
  embeddings, ``i + 1`` for layer ``i`` and ``n + 1`` for anything else (the final LayerNorm).
  No weight decay for biases, norms, embeddings, gammas and position tables.
- Decoder (``transformer.decoder``): ``lr * lr_component_decay``.
- Everything else: ``lr``.

Parameters with equal (lr, weight decay) share one group, so the optimizer has a handful of
groups rather than one per tensor.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import torch
from torch import nn

from rfdetr.config import ModelConfig, TrainConfig

_NO_DECAY_MARKERS = ("gamma", "pos_embed", "rel_pos", "bias", "norm", "embeddings")
_LAYER = re.compile(r"\.layer\.(\d+)\.")


def parameter_settings(name: str, model_config: ModelConfig, train_config: TrainConfig) -> tuple[float, float]:
    """``(lr, weight_decay)`` of the detector parameter ``name``."""
    if "backbone.0.encoder" in name:
        depth = model_config.out_feature_indexes[-1] + 1
        layer = _LAYER.search(name)
        depth_id = 0 if "embeddings" in name else int(layer.group(1)) + 1 if layer else depth + 1
        lr = (train_config.lr_encoder * train_config.lr_vit_layer_decay ** (depth + 1 - depth_id)
              * train_config.lr_component_decay ** 2)
        decay = 0.0 if any(marker in name for marker in _NO_DECAY_MARKERS) else train_config.weight_decay
        return lr, decay
    if "transformer.decoder" in name:
        return train_config.lr * train_config.lr_component_decay, train_config.weight_decay
    return train_config.lr, train_config.weight_decay


def parameter_groups(named_parameters, model_config: ModelConfig, train_config: TrainConfig) -> list[dict]:
    """Trainable parameters grouped by their (lr, weight decay); frozen ones are left out."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    for name, parameter in named_parameters:
        if parameter.requires_grad:
            groups[parameter_settings(name, model_config, train_config)].append(parameter)
    # "base": the group at the run's own lr (heads, projector, mask head): the lr that logs report.
    return [{"params": params, "lr": lr, "weight_decay": decay, "base": lr == train_config.lr}
            for (lr, decay), params in sorted(groups.items())]


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The current lr of the group at the run's ``lr`` (the largest lr when no group is marked)."""
    groups = optimizer.param_groups
    return next((g["lr"] for g in groups if g.get("base")), max(g["lr"] for g in groups))


def build_optimizer(named_parameters, model_config: ModelConfig, train_config: TrainConfig) -> torch.optim.AdamW:
    groups = parameter_groups(named_parameters, model_config, train_config)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=train_config.lr, weight_decay=train_config.weight_decay)


def lr_factor(step: int, *, steps_per_epoch: int, train_config: TrainConfig) -> float:
    """Multiplier of every group's base lr after ``step`` optimizer steps (warm-up, then cosine or step)."""
    warmup = int(steps_per_epoch * train_config.warmup_epochs)
    if step < warmup:
        return step / max(1, warmup)
    if train_config.lr_scheduler == "step":
        return 1.0 if step < train_config.lr_drop * steps_per_epoch else 0.1
    total = steps_per_epoch * train_config.epochs
    progress = (step - warmup) / max(1, total - warmup)
    low = train_config.lr_min_factor
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    train_config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch=steps_per_epoch, train_config=train_config))
