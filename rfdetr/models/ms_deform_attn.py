"""Multi-scale deformable attention in plain PyTorch (``F.grid_sample``), for CPU and GPU alike.

Each query predicts, per head, level and point, a sampling offset relative to its reference box and
an attention weight (softmax jointly over levels x points). Values are sampled bilinearly from the
projected memory of each level and summed with those weights. Channel ``c`` of the value belongs to
head ``c // head_dim``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sample_and_weight(value: torch.Tensor, spatial_shapes: list[tuple[int, int]], locations: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling + weighted sum.

    value ``[B, heads, head_dim, S]``; locations ``[B, Q, heads, levels, points, 2]`` in [0, 1]
    (x, y of the padded map); weights ``[B, Q, heads, levels * points]`` -> ``[B, Q, heads * head_dim]``.
    """
    batch, heads, head_dim, _ = value.shape
    _, queries, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=3)
    grids = 2 * locations - 1
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = per_level[level].view(batch * heads, head_dim, height, width)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [B*heads, Q, points, 2]
        sampled.append(F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    weights = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*heads, head_dim, Q, levels*points]
    output = (stacked * weights).sum(-1).view(batch, heads * head_dim, queries)
    return output.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Deformable cross-attention of ``[B, Q, C]`` queries over a flattened multi-level memory."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on a star of per-head directions, point ``i`` at distance ``i + 1``; uniform weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        distance = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        offsets = directions.view(self.n_heads, 1, 1, 2) * distance
        offsets = offsets.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(offsets.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference_boxes: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: list[tuple[int, int]], padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query ``[B, Q, C]``; reference_boxes ``[B, Q, levels, 4]`` (cx, cy, w, h in [0, 1] of the padded
        map); memory ``[B, S, C]``; padding_mask ``[B, S]`` (True = padding) -> ``[B, Q, C]``."""
        batch, queries, _ = query.shape
        length = memory.shape[1]
        value = self.value_proj(memory)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        offsets = self.sampling_offsets(query).view(batch, queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.n_heads, self.n_levels * self.n_points)
        # Offsets are in units of half the reference box, spread over the points.
        centers = reference_boxes[:, :, None, :, None, :2]
        sizes = reference_boxes[:, :, None, :, None, 2:]
        locations = centers + offsets / self.n_points * sizes * 0.5
        weights = F.softmax(weights, -1)
        value = value.transpose(1, 2).contiguous().view(batch, self.n_heads, self.d_model // self.n_heads, length)
        return self.output_proj(sample_and_weight(value, spatial_shapes, locations, weights))
