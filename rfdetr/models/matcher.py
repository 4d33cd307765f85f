"""Hungarian matching of predictions to targets, one assignment per Group-DETR query group.

Cost (all terms as upstream RF-DETR 1.2.1, same order of operations so assignments agree):
``C = cost_bbox * L1(cxcywh) + cost_class * focal_cost + cost_giou * (-GIoU)``, where the focal
class cost uses ``alpha = 0.25, gamma = 2`` regardless of ``focal_alpha`` (an upstream constant).
The assignment itself runs on CPU with :func:`scipy.optimize.linear_sum_assignment`.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from rfdetr.util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

# One image's matching: (query indices, target indices), both int64 and of equal length.
ImageMatch = tuple[torch.Tensor, torch.Tensor]

# The matcher's focal class cost is fixed upstream; ``focal_alpha`` only matters to the loss.
MATCH_FOCAL_ALPHA = 0.25
MATCH_FOCAL_GAMMA = 2.0


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets, solved independently for each query group."""

    def __init__(self, *, cost_class: float, cost_bbox: float, cost_giou: float):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("at least one matching cost must be non-zero")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, targets: list[dict]) -> torch.Tensor:
        """Matching cost ``[B, Q', T]`` between every query and every target of the batch (``T`` = all targets)."""
        batch, num_queries = outputs["pred_logits"].shape[:2]
        prob = outputs["pred_logits"].flatten(0, 1).sigmoid()
        pred_boxes = outputs["pred_boxes"].flatten(0, 1)
        target_labels = torch.cat([t["labels"] for t in targets])
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(pred_boxes.dtype)

        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes))
        alpha, gamma = MATCH_FOCAL_ALPHA, MATCH_FOCAL_GAMMA
        negative = (1 - alpha) * (prob ** gamma) * (-(1 - prob + 1e-8).log())
        positive = alpha * ((1 - prob) ** gamma) * (-(prob + 1e-8).log())
        cost_class = positive[:, target_labels] - negative[:, target_labels]
        cost_bbox = torch.cdist(pred_boxes, target_boxes, p=1)

        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        return cost.view(batch, num_queries, -1)

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict], group_detr: int = 1) -> list[ImageMatch]:
        """Match ``outputs`` (``pred_logits [B, Q', R]``, ``pred_boxes [B, Q', 4]`` cxcywh) to ``targets``.

        ``targets``: one dict per image with ``labels [T_i]`` (int64) and ``boxes [T_i, 4]`` (normalised
        cxcywh). ``Q' = group_detr * Q``; group ``g`` owns queries ``g*Q .. (g+1)*Q - 1`` and is matched on
        its own, so each target is matched once per group. Returns per image ``(query_idx, target_idx)``
        int64 CPU tensors of length ``group_detr * min(Q, T_i)``, query indices ascending within each group.
        """
        batch, num_queries = outputs["pred_logits"].shape[:2]
        if num_queries % group_detr:
            raise ValueError(f"{num_queries} queries cannot be split into {group_detr} groups")
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(batch)]

        cost = self.cost_matrix(outputs, targets).cpu()
        group_queries = num_queries // group_detr
        per_image: list[tuple[list, list]] = [([], []) for _ in range(batch)]
        for g, group_cost in enumerate(cost.split(group_queries, dim=1)):
            for i, image_cost in enumerate(group_cost.split(sizes, dim=-1)):
                rows, cols = linear_sum_assignment(image_cost[i].numpy())
                per_image[i][0].append(torch.as_tensor(rows, dtype=torch.int64) + g * group_queries)
                per_image[i][1].append(torch.as_tensor(cols, dtype=torch.int64))
        return [(torch.cat(rows), torch.cat(cols)) for rows, cols in per_image]
