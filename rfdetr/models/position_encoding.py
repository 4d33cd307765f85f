"""2-D sine position encoding of a padding mask (DETR's, normalised to the valid area).

RF-DETR has no transformer encoder and its decoder layers never read these encodings, so the
detector does not compute them; the module is kept for completeness and checked against the
reference statistics in the tests.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """``[B, H, W]`` padding mask -> ``[B, 2 * num_pos_feats, H, W]``: y features, then x features."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        valid = ~mask
        eps = 1e-6
        y = valid.cumsum(1, dtype=torch.float32)
        x = valid.cumsum(2, dtype=torch.float32)
        y = y / (y[:, -1:, :] + eps) * self.scale
        x = x / (x[:, :, -1:] + eps) * self.scale
        steps = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        frequencies = self.temperature ** (2 * (steps // 2) / self.num_pos_feats)
        pos_x = x[..., None] / frequencies
        pos_y = y[..., None] / frequencies
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
