"""Windowed DINOv2 ViT: the RF-DETR image encoder.

Patch tokens of each image are cut into ``num_windows x num_windows`` windows; every window gets
its own copy of the CLS token, so the sequence batch is ``B * num_windows**2`` ("image-major":
row ``b * nw**2 + window``). Most layers attend within a window; the layers whose index is in
``out_feature_indexes`` attend over the whole image (all windows, CLS copies included).

Stage ``k`` is the hidden state after ``k`` layers. The tapped stages are layer-normed, stripped
of CLS, stitched back into ``[B, width, H / patch, W / patch]`` maps. Layers after the last tapped
stage are never run (upstream runs base/large's layer 11 and throws its output away).

Module attribute names follow the published checkpoints (Hugging Face DINOv2 naming), e.g.
``encoder.layer.3.attention.attention.query.weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rfdetr.config import EncoderSpec


class PatchEmbeddings(nn.Module):
    """Non-overlapping ``patch_size`` convolution: ``[B, 3, H, W] -> [B, H*W/patch**2, width]``."""

    def __init__(self, width: int, patch_size: int):
        super().__init__()
        self.projection = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(images).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    """Patch embedding + CLS token + learned position table, then the cut into windows."""

    def __init__(self, width: int, patch_size: int, position_grid: int, num_windows: int):
        super().__init__()
        self.patch_size = patch_size
        self.num_windows = num_windows
        self.position_grid = position_grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        # Present in the checkpoints (masked-image pre-training) but never used for detection,
        # hence frozen: it would never receive a gradient.
        self.mask_token = nn.Parameter(torch.zeros(1, width), requires_grad=False)
        self.patch_embeddings = PatchEmbeddings(width, patch_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, position_grid * position_grid + 1, width))
        # (grid, table) precomputed by bake_position_table() for export.
        self.baked: tuple[tuple[int, int], torch.Tensor] | None = None

    def bake_position_table(self, grid_h: int, grid_w: int) -> None:
        """Precompute the resized table for one grid (ONNX has no antialiased bicubic resize)."""
        self.baked = None
        with torch.no_grad():
            self.baked = ((grid_h, grid_w), self.position_table(grid_h, grid_w).detach().clone())

    def position_table(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """``[1, 1 + grid_h * grid_w, width]``: the table, bicubically resized (antialiased, fp32) if needed."""
        if grid_h == grid_w == self.position_grid:
            return self.position_embeddings
        if self.baked is not None and self.baked[0] == (grid_h, grid_w):
            return self.baked[1]
        cls_position = self.position_embeddings[:, :1]
        grid = self.position_embeddings[:, 1:]
        width = grid.shape[-1]
        grid = grid.reshape(1, self.position_grid, self.position_grid, width).permute(0, 3, 1, 2)
        resized = F.interpolate(
            grid.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False, antialias=True
        ).to(grid.dtype)
        resized = resized.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, width)
        return torch.cat((cls_position, resized), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B * nw**2, 1 + tokens_per_window, width]``."""
        batch, _, height, width_px = images.shape
        grid_h, grid_w = height // self.patch_size, width_px // self.patch_size
        patches = self.patch_embeddings(images.to(self.patch_embeddings.projection.weight.dtype))
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), patches), dim=1)
        tokens = tokens + self.position_table(grid_h, grid_w)
        nw = self.num_windows
        if nw == 1:
            return tokens
        cls_tokens, patches = tokens[:, :1], tokens[:, 1:]
        win_h, win_w = grid_h // nw, grid_w // nw
        windows = patches.view(batch, nw, win_h, nw, win_w, -1).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(batch * nw * nw, win_h * win_w, -1)
        # repeat_interleave keeps the image-major order (row b * nw**2 + window) for any batch size.
        cls_tokens = cls_tokens.repeat_interleave(nw * nw, dim=0)
        return torch.cat((cls_tokens, windows), dim=1)


class QueryKeyValue(nn.Module):
    """Multi-head self-attention core (separate q/k/v projections, scaled dot product)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.query(x)
        key = self._split_heads(self.key(x))
        value = self._split_heads(self.value(x))
        context = self.attend(self._split_heads(query), key, value)
        batch, _, length, _ = context.shape
        return context.permute(0, 2, 1, 3).contiguous().view(batch, length, -1)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``softmax(q k^T / sqrt(head_dim)) v`` per head: ``[B, heads, L, head_dim]`` each."""
        return F.scaled_dot_product_attention(query, key, value)


class OutputProjection(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.attention = QueryKeyValue(width, num_heads)
        self.output = OutputProjection(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class LayerScale(nn.Module):
    """Per-channel learned residual scale."""

    def __init__(self, width: int, init_value: float = 1.0):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((width,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1.to(x.dtype)  # the residual stream keeps its dtype


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block; ``global_attention`` merges an image's windows for the attention only."""

    def __init__(self, spec: EncoderSpec, num_windows: int):
        super().__init__()
        self.windows_per_image = num_windows * num_windows
        self.norm1 = nn.LayerNorm(spec.width, eps=spec.layer_norm_eps)
        self.attention = Attention(spec.width, spec.num_heads)
        self.layer_scale1 = LayerScale(spec.width)
        self.norm2 = nn.LayerNorm(spec.width, eps=spec.layer_norm_eps)
        self.mlp = Mlp(spec.width, spec.width * spec.mlp_ratio)
        self.layer_scale2 = LayerScale(spec.width)

    def forward(self, x: torch.Tensor, global_attention: bool) -> torch.Tensor:
        windows, length, width = x.shape
        attention_input = x
        if global_attention:
            attention_input = x.view(windows // self.windows_per_image, self.windows_per_image * length, width)
        attended = self.attention(self.norm1(attention_input)).view(windows, length, width)
        x = self.layer_scale1(attended) + x
        return self.layer_scale2(self.mlp(self.norm2(x))) + x


class LayerStack(nn.Module):
    def __init__(self, spec: EncoderSpec, num_windows: int):
        super().__init__()
        self.layer = nn.ModuleList(Block(spec, num_windows) for _ in range(spec.depth))


class WindowedViT(nn.Module):
    """Embeddings, blocks and the shared final LayerNorm; returns the tapped hidden states."""

    def __init__(self, spec: EncoderSpec, patch_size: int, position_grid: int, num_windows: int,
                 out_feature_indexes: list[int]):
        super().__init__()
        self.embeddings = Embeddings(spec.width, patch_size, position_grid, num_windows)
        self.encoder = LayerStack(spec, num_windows)
        self.layernorm = nn.LayerNorm(spec.width, eps=spec.layer_norm_eps)
        self.out_feature_indexes = list(out_feature_indexes)
        # Set from ModelConfig.gradient_checkpointing: in training, recompute each block in backward
        # instead of keeping its activations (less memory, slower steps).
        self.gradient_checkpointing = False
        # Layers after the last tap (base/large: layer 11) stay in the checkpoint format but never
        # run, so they are frozen: they would never receive a gradient.
        for layer in self.encoder.layer[out_feature_indexes[-1]:]:
            layer.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised hidden states ``[B * nw**2, 1 + tokens_per_window, width]``, one per tapped stage."""
        return self.run_blocks(self.embeddings(images))

    def run_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The blocks up to the last tap on embedded windows ``x``; the normalised state after each tap."""
        taps = self.out_feature_indexes
        states = []
        for index in range(taps[-1]):
            # Layer i runs global attention iff i is a tap number (so it directly follows a tap).
            block = self.encoder.layer[index]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, index in taps, use_reentrant=False)
            else:
                x = block(x, global_attention=index in taps)
            if index + 1 in taps:
                states.append(self.layernorm(x))
        return states


class DinoV2Backbone(nn.Module):
    """Windowed DINOv2 producing ``len(out_feature_indexes)`` maps ``[B, width, H/patch, W/patch]``."""

    def __init__(self, spec: EncoderSpec, patch_size: int, position_grid: int, num_windows: int,
                 out_feature_indexes: list[int]):
        super().__init__()
        self.patch_size = patch_size
        self.num_windows = num_windows
        self.width = spec.width
        self.encoder = WindowedViT(spec, patch_size, position_grid, num_windows, out_feature_indexes)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        batch, _, height, width_px = images.shape
        block = self.patch_size * self.num_windows
        if height % block or width_px % block:
            raise ValueError(
                f"input size {height}x{width_px} must be a multiple of patch_size x num_windows = {block} on both sides"
            )
        grid_h, grid_w = height // self.patch_size, width_px // self.patch_size
        nw = self.num_windows
        maps = []
        for state in self.encoder(images):
            patches = state[:, 1:]
            if nw > 1:
                patches = patches.reshape(batch, nw, nw, grid_h // nw, grid_w // nw, -1).permute(0, 1, 3, 2, 4, 5)
            maps.append(patches.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous())
        return maps

    def reset_parameters(self) -> None:
        """DINOv2-style random init (truncated normal 0.02, unit layer scale)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, LayerScale):
                nn.init.ones_(module.lambda1)
        embeddings = self.encoder.embeddings
        nn.init.trunc_normal_(embeddings.position_embeddings, std=0.02)
        nn.init.trunc_normal_(embeddings.cls_token, std=0.02)
        nn.init.zeros_(embeddings.mask_token)
