"""Raw detector outputs -> per-image scored boxes in pixels."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from rfdetr.util.box_ops import box_cxcywh_to_xyxy


class PostProcess(nn.Module):
    """Sigmoid scores, top-``num_select`` over all (query, class) pairs, xyxy boxes in pixels.

    ``forward(outputs, target_sizes)`` with ``target_sizes [B, 2]`` = (height, width) of the
    original images returns one ``{"scores" [K], "labels" [K] (class-head row), "boxes" [K, 4]}``
    per image, sorted by score, ``K = min(num_select, Q * R)``. With ``class_rows`` only those head
    rows compete (spare rows that were never trained are left out); labels stay head-row numbers.
    ``clamp_boxes`` clips the boxes to the image (upstream's predict does from 1.9; the regression
    itself is unbounded).
    """

    def __init__(self, num_select: int, clamp_boxes: bool = False):
        super().__init__()
        self.num_select = num_select
        self.clamp_boxes = clamp_boxes

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor,
                class_rows: list[int] | None = None) -> list[dict[str, torch.Tensor]]:
        return self.select(outputs, target_sizes, class_rows)[0]

    @torch.no_grad()
    def select(self, outputs: dict, target_sizes: torch.Tensor, class_rows: list[int] | None = None
               ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """:meth:`forward`'s results and the query ``[B, K]`` of each detection (mask post-processing
        pastes that query's mask)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(logits) != len(target_sizes):
            raise ValueError(f"{len(logits)} outputs but {len(target_sizes)} target sizes")
        scores, query, labels = select_top(logits, self.num_select, class_rows)
        xyxy = torch.gather(box_cxcywh_to_xyxy(boxes), 1, query.unsqueeze(-1).repeat(1, 1, 4))
        height, width = target_sizes.unbind(1)
        scale = torch.stack([width, height, width, height], dim=1)
        xyxy = xyxy * scale[:, None, :]
        if self.clamp_boxes:
            xyxy = torch.minimum(xyxy.clamp_min(0.0), scale[:, None, :].to(xyxy.dtype))
        results = [{"scores": s, "labels": rows, "boxes": b} for s, rows, b in zip(scores, labels, xyxy)]
        return results, query


def select_top(logits: torch.Tensor, num_select: int, class_rows: Sequence[int] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``num_select`` (query, class) pairs of ``logits [B, Q, R]`` by ``sigmoid``, best first:
    ``(scores, queries, labels)``, each ``[B, K]``, ``K = min(num_select, Q * R')``; only the head rows
    ``class_rows`` compete when given (``R'`` of them), and labels are head-row numbers either way."""
    rows_index = None
    if class_rows is not None:
        rows_index = torch.as_tensor(list(class_rows), dtype=torch.long, device=logits.device)
        logits = logits.index_select(-1, rows_index)
    batch, _, rows = logits.shape
    flat_scores = logits.sigmoid().view(batch, -1)
    scores, flat_index = torch.topk(flat_scores, min(num_select, flat_scores.shape[1]), dim=1)
    labels = flat_index % rows
    return scores, flat_index // rows, labels if rows_index is None else rows_index[labels]
