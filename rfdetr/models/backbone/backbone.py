"""The detector's backbone: ``Joiner([Backbone(encoder, projector)])``.

The Sequential-style nesting gives the checkpoint prefixes ``backbone.0.encoder.*`` and
``backbone.0.projector.*``. (Upstream's ``backbone.1``, a sine position encoding without parameters, is
left out: no layer of this detector consumes position encodings of the levels.)
"""

from __future__ import annotations

import torch
from torch import nn

from rfdetr.config import ModelConfig
from rfdetr.models.backbone.dinov2 import DinoV2Backbone
from rfdetr.models.backbone.projector import MultiScaleProjector
from rfdetr.util.nested_tensor import NestedTensor, resize_mask


class Backbone(nn.Module):
    """Images -> ``num_feature_levels`` maps ``[B, hidden_dim, h_l, w_l]`` with their padding masks."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        spec = config.encoder_spec
        self.encoder = DinoV2Backbone(
            spec, config.patch_size, config.positional_encoding_size, config.num_windows, config.out_feature_indexes
        )
        self.encoder.encoder.gradient_checkpointing = config.gradient_checkpointing
        self.projector = MultiScaleProjector(
            spec.width, len(config.out_feature_indexes), config.hidden_dim, config.projector_scale
        )

    def forward(self, samples: NestedTensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        levels = self.projector(self.encoder(samples.tensors))
        masks = [resize_mask(samples.mask, level.shape[-2:]) for level in levels]
        return levels, masks


class Joiner(nn.Sequential):
    """``[0]`` = :class:`Backbone` (a one-element Sequential, for the checkpoint's ``backbone.0.`` prefix)."""

    def __init__(self, backbone: Backbone):
        super().__init__(backbone)

    def forward(self, samples: NestedTensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Feature levels and their padding masks."""
        return self[0](samples)


def build_backbone(config: ModelConfig) -> Joiner:
    return Joiner(Backbone(config))
