"""Decoder side of RF-DETR: two-stage query selection and a post-norm deformable decoder.

There is no transformer encoder: the projector levels are the decoder memory. Boxes live in plain
normalised (cx, cy, w, h) ("bbox reparameterisation"): a delta ``d`` refines a box ``r`` as
``xy = d_xy * r_wh + r_xy`` and ``wh = exp(d_wh) * r_wh``.

Group DETR: ``group_detr`` independent query groups of ``num_queries`` each are trained at once
(each with its own proposal heads); self-attention never crosses groups. Inference uses group 0.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.models.ms_deform_attn import MSDeformAttn


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


def refine_boxes(boxes: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Apply reparameterised deltas ``[..., 4]`` to boxes ``[..., 4]`` (both cx, cy, w, h)."""
    centers = deltas[..., :2] * boxes[..., 2:] + boxes[..., :2]
    sizes = deltas[..., 2:].exp() * boxes[..., 2:]
    return torch.cat([centers, sizes], dim=-1)


def sine_embed_boxes(boxes: torch.Tensor, dim: int) -> torch.Tensor:
    """``[B, Q, 4]`` boxes -> ``[B, Q, 4 * dim]`` sin/cos features in the order (y, x, w, h)."""
    steps = torch.arange(float(dim), dtype=boxes.dtype, device=boxes.device)
    frequencies = 10000 ** (2 * (steps // 2) / float(dim))
    embeds = []
    for coordinate in (1, 0, 2, 3):
        angles = (boxes[:, :, coordinate] * (2 * math.pi))[:, :, None] / frequencies
        embeds.append(torch.stack((angles[:, :, 0::2].sin(), angles[:, :, 1::2].cos()), dim=3).flatten(2))
    return torch.cat(embeds, dim=2)


def anchor_proposals(masks: list[torch.Tensor]) -> torch.Tensor:
    """One anchor per memory token: ``[B, S, 4]`` (cx, cy, w, h) normalised to each image's valid area.

    The side is ``0.05 * 2**level``. Anchors on padding, or with a coordinate outside (0.01, 0.99),
    are zeroed (their memory rows are zeroed too, see :func:`mask_invalid_tokens`).
    """
    proposals = []
    for level, mask in enumerate(masks):
        batch, height, width = mask.shape
        valid_h = torch.sum(~mask[:, :, 0], 1)
        valid_w = torch.sum(~mask[:, 0, :], 1)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, height - 1, height, dtype=torch.float32, device=mask.device),
            torch.linspace(0, width - 1, width, dtype=torch.float32, device=mask.device),
            indexing="ij",
        )
        grid = torch.stack([grid_x, grid_y], -1)
        scale = torch.stack([valid_w, valid_h], 1).view(batch, 1, 1, 2)
        centers = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale
        sizes = torch.ones_like(centers) * 0.05 * (2.0 ** level)
        proposals.append(torch.cat((centers, sizes), -1).view(batch, -1, 4))
    return torch.cat(proposals, 1)


def mask_invalid_tokens(memory: torch.Tensor, proposals: torch.Tensor, padding: torch.Tensor):
    """Zero the memory rows and proposals of padded tokens and of anchors too close to the border."""
    inside = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = proposals.masked_fill(padding.unsqueeze(-1), 0.0).masked_fill(~inside, 0.0)
    memory = memory.masked_fill(padding.unsqueeze(-1), 0.0).masked_fill(~inside, 0.0)
    return memory, proposals


def valid_ratios(mask: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` padding mask -> ``[B, 2]`` fraction of valid columns and rows (w, h)."""
    _, height, width = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / width, valid_h.float() / height], -1)


class DecoderLayer(nn.Module):
    """Post-norm layer: group-restricted self-attention, deformable cross-attention, ReLU FFN."""

    def __init__(self, d_model: int, sa_nheads: int, ca_nheads: int, dim_feedforward: int,
                 num_levels: int, num_points: int, group_detr: int):
        super().__init__()
        self.group_detr = group_detr
        self.self_attn = nn.MultiheadAttention(d_model, sa_nheads, dropout=0.0, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, num_levels, ca_nheads, num_points)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, reference_boxes: torch.Tensor,
                memory: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                padding_mask: torch.Tensor | None) -> torch.Tensor:
        batch, num_queries, _ = tgt.shape
        q = k = tgt + query_pos
        v = tgt
        if self.training:
            # Stack the query groups on the batch axis so that attention stays inside a group.
            group_size = num_queries // self.group_detr
            q, k, v = (torch.cat(t.split(group_size, dim=1), dim=0) for t in (q, k, v))
        attended = self.self_attn(q, k, v, need_weights=False)[0]
        if self.training:
            attended = torch.cat(attended.split(batch, dim=0), dim=1)
        tgt = self.norm1(tgt + attended)
        tgt = self.norm2(tgt + self.cross_attn(tgt + query_pos, reference_boxes, memory, spatial_shapes, padding_mask))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class Decoder(nn.Module):
    """Decoder layers sharing one set of reference boxes ("lite refpoint refine") and a final norm."""

    def __init__(self, layer: DecoderLayer, num_layers: int, d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.d_model = d_model

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, reference: torch.Tensor,
                spatial_shapes: list[tuple[int, int]], padding_mask: torch.Tensor | None,
                level_valid_ratios: torch.Tensor) -> torch.Tensor:
        """tgt ``[B, Q, C]``, reference ``[B, Q, 4]``, level_valid_ratios ``[B, L, 2]`` -> ``[layers, B, Q, C]``."""
        reference_boxes = reference[:, :, None] * torch.cat([level_valid_ratios, level_valid_ratios], -1)[:, None]
        query_pos = self.ref_point_head(sine_embed_boxes(reference_boxes[:, :, 0, :], self.d_model // 2))
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, query_pos, reference_boxes, memory, spatial_shapes, padding_mask)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class Transformer(nn.Module):
    """Two-stage proposals + decoder. See :meth:`forward` for the outputs."""

    def __init__(self, d_model: int, sa_nheads: int, ca_nheads: int, num_queries: int, num_decoder_layers: int,
                 dim_feedforward: int, num_feature_levels: int, dec_n_points: int, group_detr: int):
        super().__init__()
        layer = DecoderLayer(d_model, sa_nheads, ca_nheads, dim_feedforward, num_feature_levels, dec_n_points,
                             group_detr)
        self.decoder = Decoder(layer, num_decoder_layers, d_model)
        self.enc_output = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(group_detr))
        self.enc_output_norm = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(group_detr))
        # Proposal heads; LWDETR fills these with copies of its class / box heads.
        self.enc_out_class_embed = nn.ModuleList()
        self.enc_out_bbox_embed = nn.ModuleList()
        self.d_model = d_model
        self.num_queries = num_queries
        self.group_detr = group_detr
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()

    def select_proposals(self, scores: torch.Tensor, k: int) -> torch.Tensor:
        """Indices ``[B, k]`` of the best-scoring memory tokens (a separate step so tests can patch it)."""
        return torch.topk(scores, k, dim=1)[1]

    def forward(self, levels: list[torch.Tensor], masks: list[torch.Tensor], refpoint_embed: torch.Tensor,
                query_feat: torch.Tensor) -> dict[str, torch.Tensor]:
        """levels ``[B, C, h_l, w_l]``; refpoint_embed ``[Q', 4]``; query_feat ``[Q', C]`` (``Q' = Q * groups``
        in training, ``Q`` at eval).

        Returns ``hs [layers, B, Q', C]`` decoder states, ``reference [B, Q', 4]`` their boxes,
        ``enc_hs [B, Q', C]`` selected proposal features and ``enc_boxes [B, Q', 4]`` proposal boxes
        (not detached) and ``enc_logits [B, Q', classes]`` their class logits.
        """
        batch = levels[0].shape[0]
        spatial_shapes = [tuple(level.shape[-2:]) for level in levels]
        memory = torch.cat([level.flatten(2).transpose(1, 2) for level in levels], 1)
        padding = torch.cat([mask.flatten(1) for mask in masks], 1)
        level_valid_ratios = torch.stack([valid_ratios(mask) for mask in masks], 1).to(memory.dtype)

        token_memory, proposals = mask_invalid_tokens(memory, anchor_proposals(masks), padding)
        groups = self.group_detr if self.training else 1
        k = min(self.num_queries, memory.shape[1])
        selected_hs, selected_boxes, selected_logits = [], [], []
        for g in range(groups):
            features = self.enc_output_norm[g](self.enc_output[g](token_memory))
            logits = self.enc_out_class_embed[g](features)
            index = self.select_proposals(logits.max(-1)[0], k)
            hs = torch.gather(features, 1, index.unsqueeze(-1).expand(-1, -1, self.d_model))
            anchors = torch.gather(proposals, 1, index.unsqueeze(-1).expand(-1, -1, 4))
            # Box deltas are only needed for the selected tokens.
            selected_boxes.append(refine_boxes(anchors, self.enc_out_bbox_embed[g](hs)))
            selected_hs.append(hs)
            selected_logits.append(torch.gather(logits, 1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1])))
        enc_boxes = torch.cat(selected_boxes, dim=1)

        tgt = query_feat.unsqueeze(0).repeat(batch, 1, 1)
        deltas = refpoint_embed.unsqueeze(0).repeat(batch, 1, 1)
        selected = enc_boxes.shape[1]
        reference = torch.cat([refine_boxes(enc_boxes.detach(), deltas[:, :selected]), deltas[:, selected:]], dim=1)
        hs = self.decoder(tgt, memory, reference, spatial_shapes, padding, level_valid_ratios)
        return {
            "hs": hs,
            "reference": reference,
            "enc_hs": torch.cat(selected_hs, dim=1),
            "enc_boxes": enc_boxes,
            "enc_logits": torch.cat(selected_logits, dim=1),
        }
