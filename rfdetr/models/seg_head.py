"""The mask head built into upstream 1.11's segmentation models (``RFDETRSegNano`` ...).

Per query, a mask is the dot product of the query's decoder state with a per-pixel feature map:

- the first projector level (stride ``patch_size``) is resized bilinearly to ``1 / downsample_ratio`` of
  the input (stride 4 by default) and refined by one depthwise block per decoder layer, in order;
- decoder layer ``l``'s query states go through a residual MLP and a linear projection;
- mask logits of layer ``l`` = ``<pixel features after block l, projected query l> + bias``.

So every decoder layer has its own masks (the aux losses use them), and inference needs only the last
layer's, which still passes the features through every block. State-dict keys (the file format):
``blocks.<l>.{dwconv,norm,pwconv1}``, ``spatial_features_proj``, ``query_features_block.{norm_in,layers.0,layers.2}``,
``query_features_proj``, ``bias``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DepthwiseBlock(nn.Module):
    """``x + GELU(Linear(LayerNorm(DepthwiseConv3x3(x))))`` on a ``[B, C, H, W]`` map: a ConvNeXt block
    without its MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # channels last for the norm and the linear layer
        y = F.gelu(self.pwconv1(self.norm(y)))
        return x + y.permute(0, 3, 1, 2)


class ResidualMLP(nn.Module):
    """``x + Linear(GELU(Linear(LayerNorm(x))))`` with a 4x wider hidden layer."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.layers = nn.ModuleList([nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_in(x)
        for layer in self.layers:
            y = layer(y)
        return x + y


class SegmentationHead(nn.Module):
    """Mask logits for every query from the first projector level and the decoder's query states."""

    def __init__(self, dim: int, num_layers: int, downsample_ratio: int = 4):
        super().__init__()
        self.downsample_ratio = downsample_ratio
        self.blocks = nn.ModuleList([DepthwiseBlock(dim) for _ in range(num_layers)])
        self.spatial_features_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.query_features_block = ResidualMLP(dim)
        self.query_features_proj = nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, features: torch.Tensor, query_states: Sequence[torch.Tensor], image_size: Sequence[int],
                all_layers: bool = False) -> list[torch.Tensor]:
        """Mask logits ``[B, Q, H / r, W / r]`` for the last decoder layer, or for each layer with ``all_layers``.

        features: ``[B, C, h, w]`` first projector level; query_states: one ``[B, Q, C]`` per decoder layer
        (``hs``); image_size: ``(H, W)`` of the (padded) input batch.
        """
        layers = self.layer_embeddings(features, query_states, image_size, all_layers)
        return [dense_mask_logits(pixels, queries, self.bias) for pixels, queries in layers]

    def layer_embeddings(self, features: torch.Tensor, query_states: Sequence[torch.Tensor],
                         image_size: Sequence[int], all_layers: bool = False
                         ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per decoder layer (the last one only, unless ``all_layers``): the projected pixel embeddings
        ``[B, C, H / r, W / r]`` and query embeddings ``[B, Q, C]`` whose dot product (+ ``bias``) is
        that layer's mask logits. Training reads the logits of the matched queries only
        (:func:`matched_mask_logits`), which costs a fraction of all ``Q`` dense masks."""
        if len(query_states) != len(self.blocks):
            raise ValueError(f"{len(query_states)} decoder layers for a head of {len(self.blocks)} blocks")
        size = (int(image_size[0]) // self.downsample_ratio, int(image_size[1]) // self.downsample_ratio)
        pixels = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        layers = []
        for layer, (block, states) in enumerate(zip(self.blocks, query_states)):
            pixels = block(pixels)
            if all_layers or layer == len(self.blocks) - 1:
                queries = self.query_features_proj(self.query_features_block(states))
                layers.append((self.spatial_features_proj(pixels), queries))
        return layers


def dense_mask_logits(pixels: torch.Tensor, queries: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``[B, Q, H, W]`` logits of every query: ``<queries [B, Q, C], pixels [B, C, H, W]> + bias``."""
    batch, _, height, width = pixels.shape
    logits = torch.bmm(queries, pixels.flatten(2)).view(batch, queries.shape[1], height, width)
    return logits + bias


def matched_mask_logits(pixels: torch.Tensor, queries: torch.Tensor, bias: torch.Tensor,
                        batch_index: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` logits of the queries ``(batch_index, query_index)`` only (``[N]`` int64 each), in that
    order; one image at a time, so the peak is one image's matched masks, never ``N x C x H x W``."""
    height, width = pixels.shape[-2:]
    logits = pixels.new_empty((len(batch_index), height, width))
    for image in torch.unique(batch_index).tolist():
        rows = (batch_index == image).nonzero().squeeze(1)
        chosen = queries[image].index_select(0, query_index.index_select(0, rows)).to(pixels.dtype)
        logits[rows] = (chosen @ pixels[image].flatten(1)).view(len(rows), height, width)
    return logits + bias
