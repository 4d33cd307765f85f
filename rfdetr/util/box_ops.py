"""Box format conversions and overlaps. Boxes are ``[..., 4]`` tensors."""

from __future__ import annotations

import torch


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1); negative widths/heights are treated as 0."""
    cx, cy, w, h = boxes.unbind(-1)
    half_w = 0.5 * w.clamp(min=0.0)
    half_h = 0.5 * h.clamp(min=0.0)
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _iou_and_union(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union area of broadcastable ``[..., 4]`` xyxy boxes."""
    top_left = torch.max(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(boxes1) + _area(boxes2) - inter
    return inter / union, union


def _generalized_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """GIoU of broadcastable ``[..., 4]`` xyxy boxes."""
    iou, union = _iou_and_union(boxes1, boxes2)
    top_left = torch.min(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU and union ``[N, M]`` of xyxy boxes ``[N, 4]`` and ``[M, 4]``."""
    return _iou_and_union(boxes1[:, None, :], boxes2[None, :, :])


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU ``[N, M]`` of xyxy boxes ``[N, 4]`` and ``[M, 4]``."""
    return _generalized_iou(boxes1[:, None, :], boxes2[None, :, :])


def paired_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU ``[N]`` of row-aligned xyxy boxes ``[N, 4]`` (the diagonal of :func:`box_iou`)."""
    return _iou_and_union(boxes1, boxes2)[0]


def paired_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """GIoU ``[N]`` of row-aligned xyxy boxes ``[N, 4]`` (the diagonal of :func:`generalized_box_iou`)."""
    return _generalized_iou(boxes1, boxes2)
