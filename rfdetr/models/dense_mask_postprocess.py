"""Detections with masks for a model that predicts a mask for every query (``pred_masks``).

Upstream 1.11's segmentation models (:mod:`rfdetr.models.seg_head`) output mask logits for all
queries at a quarter of the input; a kept detection's mask is its query's logits resized bilinearly
(``align_corners=False``) to the original image and thresholded at 0, as upstream does. The logits
cover the whole input, which ``predict`` fills with the resized image (no padding).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.models.postprocess import PostProcess


class PostProcessDenseMasks(nn.Module):
    """:class:`PostProcess` results with ``masks [K, H, W]`` bool from ``pred_masks [B, Q, Hm, Wm]``.

    With ``score_threshold`` only the detections above it are kept (and get masks); ``chunk_size`` masks
    are resized at a time, so the float peak stays ``chunk_size x H x W``.
    """

    def __init__(self, num_select: int, clamp_boxes: bool = False, chunk_size: int = 16):
        super().__init__()
        self.num_select = num_select
        self.chunk_size = chunk_size
        self.boxes = PostProcess(num_select, clamp_boxes=clamp_boxes)

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor, class_rows: Sequence[int] | None = None,
                score_threshold: float | None = None, *,
                model: nn.Module | None = None) -> list[dict[str, torch.Tensor]]:
        """``model``: accepted for :class:`~rfdetr.models.mask_postprocess.PostProcessMasks`'s signature; the masks
        are already in ``outputs``."""
        rows = None if class_rows is None else list(class_rows)
        results, queries = self.boxes.select(outputs, target_sizes, rows)
        kept = []
        for image, (result, image_queries) in enumerate(zip(results, queries)):
            keep = len(image_queries)
            if score_threshold is not None:  # scores are sorted: the kept ones are a prefix
                keep = int((result["scores"] > score_threshold).sum())
            result = {key: value[:keep] for key, value in result.items()}
            logits = outputs["pred_masks"][image].index_select(0, image_queries[:keep])
            result["masks"] = self._resize(logits.float(), target_sizes[image].tolist())
            kept.append(result)
        return kept

    def _resize(self, logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        height, width = (int(s) for s in size)
        masks = torch.empty((len(logits), height, width), dtype=torch.bool, device=logits.device)
        for start in range(0, len(logits), self.chunk_size):
            chunk = logits[start:start + self.chunk_size, None]
            resized = F.interpolate(chunk, size=(height, width), mode="bilinear", align_corners=False)
            masks[start:start + len(chunk)] = resized[:, 0] > 0
        return masks
