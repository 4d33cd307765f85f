"""Mask losses of DETRsegm: sigmoid BCE (or focal) and Dice on Hungarian-matched queries only.

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

Two ways to compare (``num_points``):

- ``None``: dense. Each prediction is cropped to the cells overlapping its image; the target is
  zero-padded to the same canvas span and area-averaged onto that crop (exact when the canvas is a
  multiple of the stride, as with square training sizes).
- an int: PointRend-style points (as upstream RF-DETR and Mask2Former): per mask,
  ``importance_sample_ratio`` of the points are the most uncertain (|logit| smallest) of
  ``oversample_ratio x num_points`` random candidates, the rest uniform random; predictions and
  targets are bilinearly sampled at the same normalised points. This is cheaper for large grids and
  spends the budget on boundaries, and targets keep their full resolution (no resize at all).

Normalisation: the pixel (or point) loss is averaged per mask, then summed over matched masks and
divided by ``num_boxes`` (the fork averaged over one image axis only, facts §7.3, §12.7). Dice:
``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` per mask, summed / ``num_boxes``. Box-only instances
(``has_mask`` False in the target: no usable segmentation, :mod:`rfdetr.coco_masks`) stay matched,
so no other query takes their place, but add no mask loss; the divisor stays ``num_boxes``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F

from rfdetr.models.criterion import SetCriterion, matched_query_index
from rfdetr.models.matcher import ImageMatch

MASK_LOSS_KEYS = ("loss_mask", "loss_dice")
# A valid extent within this many cells of an integer is that integer (float noise of h / H * Hm).
_CELL_TOLERANCE = 1e-4


class MaskPredictor(Protocol):
    """What the loss and the post-processing need from a segmentation model (``DETRsegm``)."""

    def predict_masks(self, mask_context: Any, batch_index: torch.Tensor,
                      query_index: torch.Tensor) -> torch.Tensor:
        """Mask logits ``[N, Hm, Wm]`` on the padded canvas for the pairs ``(batch_index, query_index)``."""
        ...


def mask_predictor(model: Any) -> MaskPredictor:
    """``model`` itself, or the module inside a ``DistributedDataParallel`` / wrapper (``.module``)."""
    if hasattr(model, "predict_masks"):
        return model
    inner = getattr(model, "module", None)
    if inner is not None and hasattr(inner, "predict_masks"):
        return inner
    raise TypeError(f"{type(model).__name__} has no predict_masks (expected a DETRsegm)")


def matches_with_masks(targets: Sequence[dict], indices: Sequence[ImageMatch]) -> list[ImageMatch]:
    """The matched pairs whose target instance has a mask: ``has_mask`` True, or every pair of a target
    without ``has_mask``."""
    kept = []
    for target, (queries, target_index) in zip(targets, indices):
        has_mask = target.get("has_mask")
        if has_mask is not None:
            keep = has_mask.to(target_index.device)[target_index]
            queries, target_index = queries[keep.to(queries.device)], target_index[keep]
        kept.append((queries, target_index))
    return kept


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


def sample_logits(logits: torch.Tensor, points: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Bilinear samples ``[N, P]`` of canvas logits ``[N, Hm, Wm]`` at ``points [N, P, 2]`` (:func:`canvas_grid`)."""
    grid = canvas_grid(points, fractions, logits.shape[-2:]).to(logits.dtype)
    return F.grid_sample(logits[:, None], grid[:, :, None], mode="bilinear", align_corners=False)[:, 0, :, 0]


def sample_targets(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Samples ``[n, P]`` of one image's target masks ``[n, h, w]`` at normalised ``points [n, P, 2]``."""
    grid = (points * 2 - 1)[:, :, None].to(torch.float32)
    sampled = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="border", align_corners=False)
    return sampled[:, 0, :, 0]


def dense_pair(logits: torch.Tensor, masks: torch.Tensor, fraction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's ``(predictions [n, ch * cw], targets [n, ch * cw])`` on the cells overlapping its valid region.

    logits: ``[n, Hm, Wm]`` canvas logits; masks: ``[n, h, w]`` targets of the unpadded image; fraction: ``[2]``.
    The target is zero-padded to the span of the ``ch x cw`` crop and area-averaged onto it.
    """
    grid_size = logits.shape[-2:]
    extent, count = valid_cells(fraction, grid_size)
    (cols, rows), (width_cells, height_cells) = count.long().tolist(), extent.tolist()
    height, width = masks.shape[-2:]
    span_h = math.ceil(rows / height_cells * height - 1e-3)
    span_w = math.ceil(cols / width_cells * width - 1e-3)
    padded = F.pad(masks.float(), (0, max(span_w - width, 0), 0, max(span_h - height, 0)))
    targets = F.interpolate(padded[:, None], size=(rows, cols), mode="area")[:, 0]
    return logits[:, :rows, :cols].flatten(1), targets.flatten(1)


def sample_points(logits: torch.Tensor, fractions: torch.Tensor, num_points: int, oversample_ratio: float,
                  importance_sample_ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """PointRend training points ``[N, num_points, 2]`` in normalised image coordinates.

    ``importance_sample_ratio * num_points`` of them are the most uncertain (smallest |logit|, on the
    detached prediction) of ``oversample_ratio * num_points`` uniform candidates; the rest are uniform.
    """
    count, device = logits.shape[0], logits.device
    num_important = int(importance_sample_ratio * num_points)
    points = [torch.rand(count, num_points - num_important, 2, device=device, generator=generator)]
    if num_important > 0:
        num_candidates = max(int(oversample_ratio * num_points), num_important)
        candidates = torch.rand(count, num_candidates, 2, device=device, generator=generator)
        with torch.no_grad():
            uncertainty = -sample_logits(logits.detach(), candidates, fractions).abs()
        chosen = uncertainty.topk(num_important, dim=1).indices
        points.insert(0, torch.gather(candidates, 1, chosen[..., None].expand(-1, -1, 2)))
    return torch.cat(points, dim=1)


def sigmoid_ce_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid cross-entropy per mask: ``[n, K]`` logits and (soft) targets -> ``[n]``."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)


def sigmoid_focal_per_mask(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                           gamma: float = 2.0) -> torch.Tensor:
    """Mean sigmoid focal loss per mask (RetinaNet form, ``alpha``-weighted positives) -> ``[n]``."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** gamma).mean(1)


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` per mask, ``p = sigmoid(logits)`` -> ``[n]``."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(1) + 1
    denominator = prob.sum(1) + targets.sum(1) + 1
    return 1 - numerator / denominator


class MaskLoss:
    """The SetCriterion term ``"masks"``: ``loss_mask`` and ``loss_dice`` of the matched queries.

    model_for_masks: the ``DETRsegm`` being trained (or its DDP wrapper); held by reference, not as a
    submodule, so the criterion's state dict stays empty. num_points: ``None`` compares whole masks
    on the prediction grid, an int samples that many points per mask (module docstring). focal:
    sigmoid focal loss (``focal_alpha``, ``focal_gamma``) instead of BCE for ``loss_mask``. generator:
    the RNG of the point sampling (on the predictions' device), default the global one.
    """

    def __init__(self, model_for_masks: Any, *, num_points: int | None = None, focal: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, generator: torch.Generator | None = None):
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be None or >= 1, got {num_points}")
        if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
            raise ValueError("need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, got "
                             f"{oversample_ratio} and {importance_sample_ratio}")
        self.predictor = mask_predictor(model_for_masks)
        self.num_points = num_points
        self.focal = focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.generator = generator

    def __call__(self, outputs: dict, targets: Sequence[dict], indices: Sequence[ImageMatch],
                 num_boxes: float, log: bool = True) -> dict[str, torch.Tensor]:
        """``{"loss_mask", "loss_dice"}`` for an output set with ``mask_context``; ``{}`` otherwise.

        targets: per image ``masks [T_i, h, w]`` (uint8/bool/float) at the image's unpadded size, and
        optionally ``has_mask [T_i]`` (pairs whose instance has none add no loss) and ``size`` (h, w)
        (used to refine the valid fractions, :func:`valid_fractions`).
        """
        context = outputs.get("mask_context")
        if context is None:
            return {}
        indices = matches_with_masks(targets, indices)
        batch_index, query_index = matched_query_index(indices)
        if batch_index.numel() == 0:
            return self._zero_losses(context, batch_index.device)
        for position, target in enumerate(targets):
            if "masks" not in target:
                raise KeyError(f"target {position} has no 'masks' (build the dataset with masks=True)")
        logits = self.predictor.predict_masks(context, batch_index, query_index).float()
        sizes = torch.stack([t["size"] for t in targets]) if all("size" in t for t in targets) else None
        fractions = valid_fractions(context.image_mask, sizes)
        if self.num_points is None:
            predictions, target_values = self._dense(logits, targets, indices, fractions)
        else:
            predictions, target_values = self._points(logits, targets, indices, fractions[batch_index])
        mask_terms = torch.cat([self._mask_term(p, t) for p, t in zip(predictions, target_values)])
        dice_terms = torch.cat([dice_per_mask(p, t) for p, t in zip(predictions, target_values)])
        return {"loss_mask": mask_terms.sum() / num_boxes, "loss_dice": dice_terms.sum() / num_boxes}

    def _mask_term(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.focal:
            return sigmoid_focal_per_mask(logits, targets, self.focal_alpha, self.focal_gamma)
        return sigmoid_ce_per_mask(logits, targets)

    def _zero_losses(self, context: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """Zero losses that still reach every mask-head parameter (DDP expects a gradient for each)."""
        first = torch.zeros(1, dtype=torch.long, device=device)
        zero = self.predictor.predict_masks(context, first, first).float().sum() * 0.0
        return {"loss_mask": zero, "loss_dice": zero.clone()}

    @staticmethod
    def _matched_masks(targets: Sequence[dict], indices: Sequence[ImageMatch], device: torch.device):
        """(image, its matched target masks in match order) for images with at least one match."""
        for image, (target, (queries, target_index)) in enumerate(zip(targets, indices)):
            if len(queries):
                yield image, target["masks"].to(device)[target_index.to(device)]

    def _dense(self, logits: torch.Tensor, targets: Sequence[dict], indices: Sequence[ImageMatch],
               fractions: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        predictions, target_values, start = [], [], 0
        for image, masks in self._matched_masks(targets, indices, logits.device):
            prediction, target = dense_pair(logits[start:start + len(masks)], masks, fractions[image])
            predictions.append(prediction)
            target_values.append(target)
            start += len(masks)
        return predictions, target_values

    def _points(self, logits: torch.Tensor, targets: Sequence[dict], indices: Sequence[ImageMatch],
                fractions: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        points = sample_points(logits, fractions, self.num_points, self.oversample_ratio,
                               self.importance_sample_ratio, self.generator)
        predictions = sample_logits(logits, points, fractions)
        target_values, start = [], 0
        for _, masks in self._matched_masks(targets, indices, logits.device):
            target_values.append(sample_targets(masks, points[start:start + len(masks)]))
            start += len(masks)
        return [predictions], [torch.cat(target_values)]


def add_mask_losses(criterion: SetCriterion, model: Any, mask_loss_coef: float = 1.0, dice_loss_coef: float = 1.0,
                    *, num_points: int | None = None, focal: bool = False, **options: Any) -> MaskLoss:
    """Register the ``"masks"`` term on ``criterion`` with weights ``{"loss_mask": mask_loss_coef,
    "loss_dice": dice_loss_coef}`` (no suffixed copies: only the last layer has masks). ``options``
    go to :class:`MaskLoss`. Returns the term."""
    term = MaskLoss(model, num_points=num_points, focal=focal, **options)
    criterion.register_loss("masks", term, {"loss_mask": mask_loss_coef, "loss_dice": dice_loss_coef})
    return term
