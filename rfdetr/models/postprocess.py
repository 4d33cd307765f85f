"""Raw detector outputs -> per-image scored boxes in pixels."""

from __future__ import annotations

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
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(logits) != len(target_sizes):
            raise ValueError(f"{len(logits)} outputs but {len(target_sizes)} target sizes")
        if class_rows is not None:
            rows_index = torch.as_tensor(class_rows, dtype=torch.long, device=logits.device)
            logits = logits.index_select(-1, rows_index)
        batch, _, rows = logits.shape
        flat_scores = logits.sigmoid().view(batch, -1)
        k = min(self.num_select, flat_scores.shape[1])
        scores, flat_index = torch.topk(flat_scores, k, dim=1)
        query = flat_index // rows
        labels = flat_index % rows
        if class_rows is not None:
            labels = rows_index[labels]
        xyxy = torch.gather(box_cxcywh_to_xyxy(boxes), 1, query.unsqueeze(-1).repeat(1, 1, 4))
        height, width = target_sizes.unbind(1)
        scale = torch.stack([width, height, width, height], dim=1)
        xyxy = xyxy * scale[:, None, :]
        if self.clamp_boxes:
            xyxy = torch.minimum(xyxy.clamp_min(0.0), scale[:, None, :].to(xyxy.dtype))
        return [{"scores": s, "labels": rows, "boxes": b} for s, rows, b in zip(scores, labels, xyxy)]
