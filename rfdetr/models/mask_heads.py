"""Mask-head building blocks: per-query attention maps, an image stem and DETR-style conv heads.

Resolution plan (strides relative to the padded input):

- the detector memory (the coarsest projector level: stride 16 for nano / small / medium, 14 for
  base, 28 for large) carries the semantics; per query, :class:`MHAttentionMap` gives
  ``num_heads`` attention maps over it;
- :class:`ImageStem` (three stride-2 3x3 convs on the normalised image) gives edge-level maps at
  stride 4 and 8: the ViT sees 14-16 px patches, so no projector level holds boundary detail at
  stride 4, and upsampling the memory would only blur it;
- a conv head refines ``[memory, attention maps]`` at the memory grid, then fuses the stride-8
  and stride-4 maps coarse -> fine (as DETR fuses res4, res3, res2) and outputs logits at stride 4.

The head's first conv is linear in its input ``cat([memory, attention])``, so its memory part is
computed once per image (:meth:`ConvMaskHead.prepare`) and only the attention part per query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Stem widths at strides 2, 4 and 8: a few channels suffice for edges and colour boundaries.
STEM_CHANNELS = (16, 32, 64)


def _conv(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Conv2d:
    """A conv with 'same' padding, DETR's mask-head init (kaiming_uniform a=1) and zero bias."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


def _group_norm(groups: int, channels: int) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"GroupNorm: {groups} groups do not divide {channels} channels")
    return nn.GroupNorm(groups, channels)


class MHAttentionMap(nn.Module):
    """Per-query multi-head attention weights over a feature map (no values are attended).

    Logits ``q_h . k_h(y, x) / sqrt(hidden_dim / num_heads)``; padded positions get ``-inf``; one
    softmax runs jointly over heads and positions, so each query's maps sum to 1 overall.
    """

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.q_linear = nn.Linear(query_dim, hidden_dim)
        self.k_linear = nn.Linear(query_dim, hidden_dim)
        for layer in (self.q_linear, self.k_linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.normalize_fact = float(hidden_dim / num_heads) ** -0.5

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        """``[B, query_dim, H, W]`` -> keys ``[B, heads, hidden_dim / heads, H, W]`` (k_linear as a 1x1 conv)."""
        keys = F.conv2d(memory, self.k_linear.weight[:, :, None, None], self.k_linear.bias)
        return keys.unflatten(1, (self.num_heads, self.hidden_dim // self.num_heads))

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, padding_mask: torch.Tensor | None,
               batch_index: torch.Tensor) -> torch.Tensor:
        """queries ``[N, query_dim]`` of images ``batch_index [N]``; keys from :meth:`project_keys`;
        padding_mask ``[B, H, W]`` (True = padding) -> weights ``[N, heads, H, W]``."""
        q = self.q_linear(queries) * self.normalize_fact
        q = q.view(q.shape[0], self.num_heads, self.hidden_dim // self.num_heads)
        logits = torch.einsum("nhd,nhdyx->nhyx", q, keys[batch_index])
        if padding_mask is not None:
            logits = logits.masked_fill(padding_mask[batch_index][:, None], float("-inf"))
        return logits.flatten(1).softmax(-1).view_as(logits)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, padding_mask: torch.Tensor | None = None,
                batch_index: torch.Tensor | None = None) -> torch.Tensor:
        """Attention maps ``[N, heads, H, W]`` of queries ``[N, C]`` over memory ``[B, C, H, W]``.

        ``batch_index [N]`` says which image each query belongs to (default: query n <-> image n).
        """
        if batch_index is None:
            batch_index = torch.arange(queries.shape[0], device=queries.device)
        return self.attend(queries, self.project_keys(memory), padding_mask, batch_index)


class ImageStem(nn.Module):
    """Three stride-2 3x3 conv + GroupNorm + ReLU units on the normalised ``[B, 3, H, W]`` images."""

    def __init__(self, channels: tuple[int, int, int] = STEM_CHANNELS, groups: int = 8):
        super().__init__()
        widths = (3, *channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1, bias=False) for i in range(3)
        )
        self.norms = nn.ModuleList(_group_norm(groups, width) for width in channels)
        self.out_channels = (channels[1], channels[2])  # stride 4, stride 8

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, 64, H/8, W/8], [B, 32, H/4, W/4])`` (sides rounded up), coarse first as the head fuses them."""
        x = images
        maps = []
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)))
            maps.append(x)
        return maps[2], maps[1]


def box_coverage(boxes: torch.Tensor, fractions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The share of each grid cell that a box covers: ``[N, 1, h, w]`` in [0, 1].

    boxes ``[N, 4]``: (cx, cy, w, h) normalised to each image (the detector's ``pred_boxes``);
    fractions ``[N, 2]``: (height, width) share of the padded canvas that the image fills (top-left);
    size: (h, w) of a grid over the whole canvas. Exact areas, so a box smaller than a cell still shows.
    """
    def coverage(low: torch.Tensor, high: torch.Tensor, cells: int) -> torch.Tensor:  # [N] -> [N, cells]
        edges = torch.arange(cells + 1, device=boxes.device, dtype=boxes.dtype) / cells
        overlap = torch.minimum(high[:, None], edges[None, 1:]) - torch.maximum(low[:, None], edges[None, :-1])
        return overlap.clamp(min=0) * cells

    cx, cy, width, height = boxes.unbind(-1)
    along_y = coverage((cy - height / 2) * fractions[:, 0], (cy + height / 2) * fractions[:, 0], size[0])
    along_x = coverage((cx - width / 2) * fractions[:, 1], (cx + width / 2) * fractions[:, 1], size[1])
    return (along_y[:, :, None] * along_x[:, None, :])[:, None]


class ConvMaskHead(nn.Module):
    """DETR-style conv mask head; per query: ``[memory, attention maps, box]`` -> logits at stride 4.

    lay1 (C + heads + 1 -> w1) and lay2 (-> w2) at the memory grid; upsample (bilinear) to the
    stride-8 grid + adapter1(stride-8 features), lay3 (+ box -> w3); upsample to stride 4 +
    adapter2(stride-4 features), lay4 (+ box -> w4); out_lay (-> 1). Every conv is 3x3 + GroupNorm
    + ReLU except the 1x1 adapters and out_lay. "box" is the query's detected box as a coverage
    map (:func:`box_coverage`) at that grid: attention maps alone are a weak per-query signal next
    to the shared memory and image features, and without the box the head learns one foreground
    mask for all the objects of an image (measured; the box map is what makes masks per instance).
    """

    def __init__(self, hidden_dim: int, num_heads: int, fine_channels: tuple[int, int],
                 widths: tuple[int, int, int, int], groups: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        w1, w2, w3, w4 = widths
        self.lay1, self.gn1 = _conv(hidden_dim + num_heads + 1, w1), _group_norm(groups, w1)
        self.lay2, self.gn2 = _conv(w1, w2), _group_norm(groups, w2)
        self.lay3, self.gn3 = _conv(w2 + 1, w3), _group_norm(groups, w3)
        self.lay4, self.gn4 = _conv(w3 + 1, w4), _group_norm(groups, w4)
        self.out_lay = _conv(w4, 1)
        self.adapter1 = _conv(fine_channels[0], w2, kernel=1)
        self.adapter2 = _conv(fine_channels[1], w3, kernel=1)

    def prepare(self, memory: torch.Tensor, fine_features: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        """Per-image work, done once: lay1 over memory ``[B, C, h, w]`` and the adapted fine maps."""
        memory_term = F.conv2d(memory, self.lay1.weight[:, : self.hidden_dim], self.lay1.bias, padding=1)
        return [memory_term, self.adapter1(fine_features[0]), self.adapter2(fine_features[1])]

    def forward(self, attention: torch.Tensor, prepared: list[torch.Tensor], batch_index: torch.Tensor,
                boxes: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
        """attention ``[N, heads, h, w]`` of queries in images ``batch_index [N]``; ``prepared`` from
        :meth:`prepare`; boxes ``[N, 4]`` and canvas fractions ``[N, 2]`` as :func:`box_coverage`
        takes them -> mask logits ``[N, H4, W4]`` on the stride-4 grid of the padded batch."""
        memory_term, fine8, fine4 = prepared
        # The joint softmax spreads 1 over heads x positions (16 x 576 at 384 px). Maps of ~1e-4 next to a
        # memory term of order 1 leave the query without influence: scaled so that a uniform map is all ones.
        attention = attention * attention[0].numel()
        per_query = torch.cat([attention, box_coverage(boxes, fractions, attention.shape[-2:])], dim=1)
        x = memory_term[batch_index] + F.conv2d(per_query, self.lay1.weight[:, self.hidden_dim:], padding=1)
        x = F.relu(self.gn1(x))
        x = F.relu(self.gn2(self.lay2(x)))
        x = F.interpolate(x, size=fine8.shape[-2:], mode="bilinear", align_corners=False) + fine8[batch_index]
        x = torch.cat([x, box_coverage(boxes, fractions, fine8.shape[-2:])], dim=1)
        x = F.relu(self.gn3(self.lay3(x)))
        x = F.interpolate(x, size=fine4.shape[-2:], mode="bilinear", align_corners=False) + fine4[batch_index]
        x = torch.cat([x, box_coverage(boxes, fractions, fine4.shape[-2:])], dim=1)
        x = F.relu(self.gn4(self.lay4(x)))
        return self.out_lay(x).squeeze(1)


class MaskHeadSmallConv(ConvMaskHead):
    """The standard head: widths C, C/2, C/4, C/8 with GroupNorm(8) (nano: 256, 128, 64, 32)."""

    def __init__(self, hidden_dim: int, num_heads: int, fine_channels: tuple[int, int]):
        widths = (hidden_dim, hidden_dim // 2, hidden_dim // 4, hidden_dim // 8)
        super().__init__(hidden_dim, num_heads, fine_channels, widths, groups=8)


class MaskHeadNano(ConvMaskHead):
    """A light head: widths C/4, C/8, C/16, C/32 with GroupNorm(4) (nano: 64, 32, 16, 8)."""

    def __init__(self, hidden_dim: int, num_heads: int, fine_channels: tuple[int, int]):
        widths = (hidden_dim // 4, hidden_dim // 8, hidden_dim // 16, hidden_dim // 32)
        super().__init__(hidden_dim, num_heads, fine_channels, widths, groups=4)


MASK_HEADS: dict[str, type[ConvMaskHead]] = {"detr": MaskHeadSmallConv, "light": MaskHeadNano}
