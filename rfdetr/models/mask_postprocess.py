"""Detections with masks: :class:`PostProcess` plus per-detection masks at the original image size.

Masks are predicted only for the detections that are kept (the top ``max_masks`` by score: in
evaluation :data:`rfdetr.config.COCO_MAX_DETECTIONS`, all that COCO's ``maxDets`` evaluates), once per distinct
(image, query) pair (a query
may be detected under several classes). Each mask is read from the cells of the padded canvas that
overlap its image, resized bilinearly (as logits) to the original size and thresholded; the
mapping is the one the loss uses (:func:`rfdetr.models.mask_geometry.canvas_grid`).

Memory: the result holds ``K x H x W`` bools per image, 100 masks of a 1080 x 1920 original are
~200 MB; the float logits are pasted ``chunk_size`` masks at a time (16 x 1080 x 1920 x 4 B =
133 MB), so the peak stays near the bool result. Callers that need less (RLE encoding for COCO,
streaming) can lower ``max_masks`` / set ``score_threshold`` or call :func:`paste_masks` per chunk.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.models.mask_geometry import canvas_grid, valid_fractions
from rfdetr.models.postprocess import PostProcess


def paste_masks(logits: torch.Tensor, fraction: torch.Tensor, size: Sequence[int], threshold: float = 0.0,
                chunk_size: int = 16) -> torch.Tensor:
    """One image's canvas logits ``[n, Hm, Wm]`` -> bool masks ``[n, H, W]`` at ``size`` = (H, W).

    fraction: ``[2]`` (h, w) of the canvas the image fills; its valid cells are bilinearly resized
    (``align_corners=False``, clamped inside the valid region) to the original size, then ``> threshold``.
    """
    height, width = (int(s) for s in size)
    device = logits.device
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    points = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).view(1, -1, 2)
    grid = canvas_grid(points, fraction.float()[None], logits.shape[-2:])
    masks = torch.empty((logits.shape[0], height, width), dtype=torch.bool, device=device)
    for start in range(0, logits.shape[0], chunk_size):
        chunk = logits[start:start + chunk_size].float()
        grid_chunk = grid.expand(len(chunk), -1, -1)
        sampled = F.grid_sample(chunk[:, None], grid_chunk[:, :, None], mode="bilinear",
                                                  align_corners=False)
        masks[start:start + len(chunk)] = (sampled.view(len(chunk), height, width) > threshold)
    return masks


class PostProcessMasks(nn.Module):
    """:class:`PostProcess` results (first ``max_masks`` detections) with ``masks [K, H, W]`` bool added.

    ``forward(outputs, target_sizes, class_rows=None, score_threshold=None, *, model)``: outputs of
    the ``DETRsegm`` ``model`` (with ``mask_context``), whose mask head predicts the masks (pass the
    model that ran: the EMA copy itself when evaluating it), ``target_sizes [B, 2]`` original
    (height, width). Per image: ``scores``, ``labels``, ``boxes`` as PostProcess gives them,
    truncated to the top ``max_masks`` (``None``: all ``num_select``) and, with
    ``score_threshold``, to scores above it, so boxes and masks stay aligned; ``masks`` predicted
    for those only.
    """

    def __init__(self, num_select: int, max_masks: int | None, mask_threshold: float = 0.0,
                 chunk_size: int = 16):
        super().__init__()
        if max_masks is not None and max_masks < 0:
            raise ValueError(f"max_masks must be None or >= 0, got {max_masks}")
        self.num_select = num_select
        self.max_masks = max_masks
        self.mask_threshold = mask_threshold
        self.chunk_size = chunk_size
        self.boxes = PostProcess(num_select)

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor, class_rows: Sequence[int] | None = None,
                score_threshold: float | None = None, *, model: nn.Module) -> list[dict[str, torch.Tensor]]:
        context = outputs["mask_context"]
        results, queries = self.boxes.select(outputs, target_sizes, None if class_rows is None else list(class_rows))
        kept, pairs = [], []
        for result, image_queries in zip(results, queries):
            keep = len(image_queries) if self.max_masks is None else min(self.max_masks, len(image_queries))
            if score_threshold is not None:  # scores are sorted: the kept ones are a prefix
                keep = min(keep, int((result["scores"] > score_threshold).sum()))
            kept.append({key: value[:keep] for key, value in result.items()})
            pairs.append(torch.unique(image_queries[:keep], return_inverse=True))
        batch_index = torch.cat([torch.full_like(unique, i) for i, (unique, _) in enumerate(pairs)])
        query_index = torch.cat([unique for unique, _ in pairs])
        logits = model.predict_masks(context, batch_index, query_index)
        fractions = valid_fractions(context.image_mask)
        start = 0
        for image, (result, (unique, inverse)) in enumerate(zip(kept, pairs)):
            detection_logits = logits[start:start + len(unique)][inverse]  # one per kept detection
            start += len(unique)
            result["masks"] = paste_masks(detection_logits, fractions[image], target_sizes[image].tolist(),
                                          self.mask_threshold, self.chunk_size)
        return kept

