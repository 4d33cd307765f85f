"""Mask losses of a ``DETRsegm`` or of a built-in mask head: sigmoid BCE and Dice on
Hungarian-matched queries only.

Geometry: :mod:`rfdetr.models.mask_geometry` (where a mask's image lies on the padded canvas).

Each prediction is cropped to the cells overlapping its image; the target is zero-padded to the
same canvas span and area-averaged onto that crop (exact when the canvas is a multiple of the
stride, as with square training sizes).

Normalisation: the pixel loss is averaged per mask, then summed over matched masks and
divided by ``num_boxes`` (not over one image axis only). Dice:
``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` per mask, summed / ``num_boxes``. Box-only instances
(``has_mask`` False in the target: no usable segmentation, :mod:`rfdetr.datasets.coco_masks`) stay matched,
so no other query takes their place, but add no mask loss; the divisor stays ``num_boxes``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from rfdetr.models.criterion import SetCriterion, matched_query_index
from rfdetr.models.mask_geometry import valid_cells, valid_fractions
from rfdetr.models.matcher import ImageMatch
from rfdetr.models.seg_head import matched_mask_logits

MASK_LOSS_KEYS = ("loss_mask", "loss_dice")


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


def sigmoid_ce_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid cross-entropy per mask: ``[n, K]`` logits and (soft) targets -> ``[n]``."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` per mask, ``p = sigmoid(logits)`` -> ``[n]``."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(1) + 1
    denominator = prob.sum(1) + targets.sum(1) + 1
    return 1 - numerator / denominator


class MaskLoss:
    """The SetCriterion term ``"masks"``: ``loss_mask`` and ``loss_dice`` of the matched queries.

    A ``DETRsegm``'s masks come from the outputs' ``mask_context`` through the mask head of the model
    that ran, which the criterion passes with each call (``model.predict_masks``): the loss holds no
    model, and the EMA copy's outputs are scored with the EMA's head. A built-in head's come with the
    outputs (:meth:`__call__`).
    """

    def __call__(self, outputs: dict, targets: Sequence[dict], indices: Sequence[ImageMatch],
                 num_boxes: float, log: bool = True, model: Any = None) -> dict[str, torch.Tensor]:
        """``{"loss_mask", "loss_dice"}`` for an output set that has masks; ``{}`` otherwise.

        The masks of an output set come from one of: ``mask_context`` (a ``DETRsegm``: ``model``, the
        model that made ``outputs``, computes them with :meth:`predict_masks`), ``pred_masks`` (dense
        logits of every query) or ``pred_mask_pixels`` / ``pred_mask_queries`` / ``pred_mask_bias`` (the
        embeddings of a built-in head, :mod:`rfdetr.models.seg_head`).

        targets: per image ``masks [T_i, h, w]`` (uint8/bool/float) at the image's unpadded size, and
        optionally ``has_mask [T_i]`` (pairs whose instance has none add no loss) and ``size`` (h, w)
        (where each image lies on the padded canvas, :mod:`rfdetr.models.mask_geometry`).
        """
        source = _mask_source(outputs)
        if source is None:
            return {}
        if source == "mask_context" and model is None:
            raise ValueError("mask losses need the model that made the outputs: "
                             "criterion(outputs, targets, model=model)")
        indices = matches_with_masks(targets, indices)
        batch_index, query_index = matched_query_index(indices)
        if batch_index.numel() == 0:
            return _zero_losses(outputs, source, model, batch_index.device)
        for position, target in enumerate(targets):
            if "masks" not in target:
                raise KeyError(f"target {position} has no 'masks' (build the dataset with masks=True)")
        logits = _matched_logits(outputs, source, model, batch_index, query_index).float()
        fractions = _canvas_fractions(outputs, source, targets)
        mask_terms, dice_terms, start = [], [], 0
        for image, masks in _matched_target_masks(targets, indices, logits.device):
            prediction, target = dense_pair(logits[start:start + len(masks)], masks, fractions[image])
            mask_terms.append(sigmoid_ce_per_mask(prediction, target))
            dice_terms.append(dice_per_mask(prediction, target))
            start += len(masks)
        return {"loss_mask": torch.cat(mask_terms).sum() / num_boxes,
                "loss_dice": torch.cat(dice_terms).sum() / num_boxes}


def _matched_target_masks(targets: Sequence[dict], indices: Sequence[ImageMatch], device: torch.device):
    """(image, its matched target masks in match order) for images with at least one match."""
    for image, (target, (queries, target_index)) in enumerate(zip(targets, indices)):
        if len(queries):
            yield image, target["masks"].to(device)[target_index.to(device)]


def _mask_source(outputs: dict) -> str | None:
    """Which of the mask outputs (see :meth:`MaskLoss.__call__`) an output set carries, if any."""
    for key in ("mask_context", "pred_masks", "pred_mask_queries"):
        if outputs.get(key) is not None:
            return key
    return None


def _matched_logits(outputs: dict, source: str, model: Any, batch_index: torch.Tensor,
                    query_index: torch.Tensor) -> torch.Tensor:
    """``[N, Hm, Wm]`` canvas logits of the matched queries, in match order."""
    if source == "mask_context":
        return model.predict_masks(outputs["mask_context"], batch_index, query_index)
    if source == "pred_masks":
        return outputs["pred_masks"][batch_index, query_index]
    return matched_mask_logits(outputs["pred_mask_pixels"], outputs["pred_mask_queries"], outputs["pred_mask_bias"],
                               batch_index, query_index)


def _zero_losses(outputs: dict, source: str, model: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """Zero losses that still reach every mask-head parameter (DDP expects a gradient for each)."""
    if source == "mask_context":
        first = torch.zeros(1, dtype=torch.long, device=device)
        zero = model.predict_masks(outputs["mask_context"], first, first).float().sum() * 0.0
    elif source == "pred_masks":
        zero = outputs["pred_masks"].float().sum() * 0.0
    else:
        zero = sum(outputs[key].float().sum() for key in ("pred_mask_pixels", "pred_mask_queries", "pred_mask_bias"))
        zero = zero * 0.0
    return {"loss_mask": zero, "loss_dice": zero.clone()}


def _canvas_fractions(outputs: dict, source: str, targets: Sequence[dict]) -> torch.Tensor:
    """``[B, 2]`` (h, w) part of the padded canvas each image fills: from the padding mask a ``DETRsegm``
    keeps, else from the targets' ``size`` (images are padded at the bottom and right to the largest
    height and width of the batch, and a batch resize scales canvas and images alike)."""
    sizes = torch.stack([t["size"] for t in targets]) if all("size" in t for t in targets) else None
    if source == "mask_context":
        return valid_fractions(outputs["mask_context"].image_mask, sizes)
    if sizes is None:
        raise KeyError("mask losses of dense mask outputs need every target's 'size' (the image's unpadded h, w)")
    sizes = sizes.float()
    return sizes / sizes.max(0).values


def add_mask_losses(criterion: SetCriterion, mask_loss_coef: float, dice_loss_coef: float, *,
                    suffixes: Sequence[str] = ()) -> MaskLoss:
    """Register the ``"masks"`` term on ``criterion`` with weights ``{"loss_mask": mask_loss_coef,
    "loss_dice": dice_loss_coef}`` for the last decoder layer and for each output set of ``suffixes``
    (``"_0"``, ...: the earlier layers of a head that masks every layer; a ``DETRsegm`` masks the last
    layer only). Returns the term."""
    term = MaskLoss()
    weights = {"loss_mask": mask_loss_coef, "loss_dice": dice_loss_coef}
    criterion.register_loss("masks", term, {key + suffix: value for suffix in ("", *suffixes)
                                            for key, value in weights.items()})
    return term
