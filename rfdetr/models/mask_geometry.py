"""Where each image of a batch lies on the padded canvas of mask logits, shared by the mask head, the
mask losses and mask post-processing.

Geometry. ``predict_masks`` returns logits ``[N, Hm, Wm]`` on a grid that covers the whole padded
canvas of the batch tensor; cell ``j`` covers canvas x in ``[j, j + 1) * W / Wm``. Image ``i`` fills
the top-left fraction ``(fh, fw)`` of the canvas (:func:`valid_fractions`), so its valid region
spans ``fw * Wm`` cells (maybe fractional) and a point at normalised x ``u`` of the image (the
coordinates of its boxes and of its target masks, whatever their pixel size) lies at cell
coordinate ``u * fw * Wm``. Both batch padding and the per-step multi-scale batch resize
(``resize_batch``, which scales canvas and image alike) keep the fractions, so targets never need
resizing with the batch. Predictions are read only from the cells that overlap the valid region
(clamped there, the way ``grid_sample``'s border padding treats an image alone), so a mask's loss
does not depend on the padding around it: the same image alone or padded beside a larger one gives
the same loss.
"""

from __future__ import annotations

from typing import Sequence

import torch

# A valid extent within this many cells of an integer is that integer (float noise of h / H * Hm).
_CELL_TOLERANCE = 1e-4


def valid_fractions(image_mask: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, 2]`` (height, width) fraction of the canvas that each image fills (top-left).

    image_mask: ``[B, H, W]`` bool, True on padding (``MaskContext.image_mask``). Counting its valid
    rows / columns is exact for a padded batch and within ``1 / H`` after the multi-scale batch
    resize (nearest-resized mask). sizes: optional ``[B, 2]`` unpadded (h, w) of the images
    (targets' ``size``); when ``size / max(size)`` (collate pads to the largest image) agrees with the
    mask within that tolerance it is used instead, being exact after a resize too.
    """
    canvas = torch.tensor(image_mask.shape[-2:], dtype=torch.float32, device=image_mask.device)
    valid = ~image_mask
    counts = torch.stack([valid.any(2).sum(1), valid.any(1).sum(1)], dim=1).float()
    from_mask = counts.clamp(min=1) / canvas
    if sizes is None:
        return from_mask
    sizes = sizes.to(device=image_mask.device, dtype=torch.float32)
    from_sizes = sizes / sizes.max(0).values
    consistent = (from_sizes - from_mask).abs() <= 1 / canvas + 1e-6
    return torch.where(consistent, from_sizes, from_mask)


def valid_cells(fractions: torch.Tensor, grid_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(extent, count)``, both ``[..., 2]`` as (x, y): the valid region in cells (fractional) and the
    number of cells that overlap it (``ceil``, at least 1)."""
    height, width = grid_size
    extent = fractions.flip(-1) * fractions.new_tensor([float(width), float(height)])
    count = torch.ceil(extent - _CELL_TOLERANCE).clamp(min=1)
    return extent, count


def canvas_grid(points: torch.Tensor, fractions: torch.Tensor, grid_size: Sequence[int]) -> torch.Tensor:
    """``grid_sample`` coordinates (``align_corners=False``) on the canvas grid of ``points``.

    points: ``[N, P, 2]`` (x, y) in [0, 1] of each mask's image (its valid region); fractions:
    ``[N, 2]`` (h, w) of that image (:func:`valid_fractions`). Cell-centre coordinates are clamped to
    the cells overlapping the valid region, so sampling never reads the padding beyond them.
    """
    height, width = grid_size
    extent, count = valid_cells(fractions, grid_size)
    cell = points * extent[:, None] - 0.5
    cell = torch.minimum(cell, (count - 1)[:, None]).clamp(min=0)
    return (cell + 0.5) / points.new_tensor([float(width), float(height)]) * 2 - 1
