"""The detector's backbone: ``Joiner([Backbone(encoder, projector), PositionEmbeddingSine])``.

The Sequential-style nesting gives the checkpoint prefixes ``backbone.0.encoder.*`` and
``backbone.0.projector.*``; ``backbone.1`` (the position encoding) has no parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from rfdetr.config import ModelConfig
from rfdetr.models.backbone.dinov2 import DinoV2Backbone
from rfdetr.models.backbone.projector import MultiScaleProjector
from rfdetr.models.position_encoding import PositionEmbeddingSine
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
    """``[0]`` = :class:`Backbone`, ``[1]`` = :class:`PositionEmbeddingSine`."""

    def __init__(self, backbone: Backbone, position_embedding: PositionEmbeddingSine):
        super().__init__(backbone, position_embedding)

    def forward(self, samples: NestedTensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Feature levels and masks. The position encodings are not computed: no layer consumes them."""
        return self[0](samples)

    def position_encodings(self, masks: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """Sine encodings ``[B, hidden_dim, h_l, w_l]`` of each level (for inspection and tests)."""
        return [self[1](mask).to(dtype) for mask in masks]


def build_backbone(config: ModelConfig) -> Joiner:
    return Joiner(Backbone(config), PositionEmbeddingSine(num_pos_feats=config.hidden_dim // 2))
