"""Training losses of the detector (SetCriterion, as upstream RF-DETR 1.2.1 configures it).

Every output set (the last decoder layer, each earlier layer in ``aux_outputs``, the two-stage
proposals in ``enc_outputs``) is Hungarian-matched on its own, then each loss term is computed on
the matched pairs. Key suffixes: none for the last layer, ``_0 .. _{L-2}`` for the earlier layers,
``_enc`` for the proposals.

Loss terms are looked up by name in :attr:`SetCriterion.loss_functions`; another module (mask
losses) adds its own with :meth:`SetCriterion.register_loss`. A term is called as
``fn(outputs, targets, indices, num_boxes, log=..., model=...)`` (``model``: the model that made the
outputs, for terms that call back into it, as the mask losses do) and returns a dict of named
scalars; it returns ``{}`` for an output set it does not apply to (e.g. ``aux_outputs`` carry no masks).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.config import ModelConfig, TrainConfig
from rfdetr.models.matcher import HungarianMatcher, ImageMatch
from rfdetr.util.box_ops import box_cxcywh_to_xyxy, paired_box_iou, paired_generalized_box_iou

LossFunction = Callable[..., dict[str, torch.Tensor]]

DEFAULT_LOSSES: tuple[str, ...] = ("labels", "boxes", "cardinality")
# Exponent of the negative weight p^gamma in IA-BCE (fixed upstream).
IA_BCE_GAMMA = 2
REDUCED = (torch.bfloat16, torch.float16)


def matched_query_index(indices: Sequence[ImageMatch]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch_idx, query_idx)`` of all matched queries, to index ``[B, Q', ...]`` outputs."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx


def matched_targets(targets: Sequence[dict], indices: Sequence[ImageMatch], key: str) -> torch.Tensor:
    """``targets[i][key]`` of every matched pair, in the order of :func:`matched_query_index`."""
    return torch.cat([t[key][j] for t, (_, j) in zip(targets, indices)])


def top1_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``100 - top-1 accuracy`` in percent of ``logits [N, R]`` against ``labels [N]`` (100 when N = 0)."""
    if labels.numel() == 0:
        return torch.full([], 100.0, device=logits.device)
    correct = (logits.argmax(-1) == labels).float().sum(0)
    return 100 - correct * (100.0 / labels.shape[0])


def in_float32(output_set: dict) -> dict:
    """``output_set`` with its reduced-precision predictions (an autocast forward's bf16 or fp16) as
    fp32, so that matching costs and losses are computed in full precision; others pass as they are."""
    return {key: value.float() if key in ("pred_logits", "pred_boxes") and value.dtype in REDUCED else value
            for key, value in output_set.items()}


def normalising_num_boxes(targets: Sequence[dict], group_detr: int, device: torch.device) -> float:
    """Matched boxes per rank: total targets x groups, averaged over distributed ranks, at least 1."""
    num_boxes = torch.as_tensor([float(sum(len(t["labels"]) for t in targets) * group_detr)],
                                dtype=torch.float, device=device)
    world_size = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(num_boxes)
        world_size = torch.distributed.get_world_size()
    return torch.clamp(num_boxes / world_size, min=1).item()


class SetCriterion(nn.Module):
    """Hungarian-matched detection losses: IA-BCE classification, L1 and GIoU boxes (+ logging metrics)."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float], *,
                 focal_alpha: float, group_detr: int, losses: Iterable[str] = DEFAULT_LOSSES):
        """num_classes: highest class index (the class head has ``num_classes + 1`` rows); group_detr:
        query groups in training (evaluation matches a single group; losses are normalised by the targets
        of all groups)."""
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.focal_alpha = focal_alpha
        self.losses = list(losses)
        self.group_detr = group_detr
        self.loss_functions: dict[str, LossFunction] = {
            "labels": self.loss_labels,
            "boxes": self.loss_boxes,
            "cardinality": self.loss_cardinality,
        }

    def register_loss(self, name: str, function: LossFunction, weights: dict[str, float] | None = None) -> None:
        """Add (or replace) a loss term, apply it from now on, and add its keys' weights."""
        self.loss_functions[name] = function
        if name not in self.losses:
            self.losses.append(name)
        self.weight_dict.update(weights or {})

    def loss_labels(self, outputs: dict, targets: Sequence[dict], indices: Sequence[ImageMatch],
                    num_boxes: float, log: bool = True, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """IoU-aware BCE over all ``B x Q' x R`` logits: ``loss_ce`` (and ``class_error`` if ``log``).

        Matched (query, class) entries: positive weight ``t = clamp(p^alpha * IoU^(1-alpha), 0.01)``
        (detached), negative weight ``1 - t``; every other entry: negative weight ``p^2`` (not detached).
        """
        logits = outputs["pred_logits"]
        idx = matched_query_index(indices)
        labels = matched_targets(targets, indices, "labels")
        pred_boxes = outputs["pred_boxes"][idx]
        target_boxes = matched_targets(targets, indices, "boxes")
        ious = paired_box_iou(box_cxcywh_to_xyxy(pred_boxes.detach()), box_cxcywh_to_xyxy(target_boxes)).detach()

        prob = logits.sigmoid()
        positive_index = (*idx, labels)
        pos_weights = torch.zeros_like(logits)
        neg_weights = prob ** IA_BCE_GAMMA
        t = prob[positive_index].pow(self.focal_alpha) * ious.pow(1 - self.focal_alpha)
        t = torch.clamp(t, 0.01).detach()
        pos_weights[positive_index] = t.to(pos_weights.dtype)
        neg_weights[positive_index] = 1 - t.to(neg_weights.dtype)
        # -pos * log(p) - neg * log(1 - p), written with logsigmoid for stability.
        loss = neg_weights * logits - F.logsigmoid(logits) * (pos_weights + neg_weights)
        losses = {"loss_ce": loss.sum() / num_boxes}
        if log:
            losses["class_error"] = top1_error(logits[idx].detach(), labels)
        return losses

    def loss_boxes(self, outputs: dict, targets: Sequence[dict], indices: Sequence[ImageMatch],
                   num_boxes: float, log: bool = True, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """``loss_bbox``: L1 of matched cxcywh boxes; ``loss_giou``: ``1 - GIoU``; both summed / num_boxes."""
        pred_boxes = outputs["pred_boxes"][matched_query_index(indices)]
        target_boxes = matched_targets(targets, indices, "boxes")
        loss_bbox = F.l1_loss(pred_boxes, target_boxes, reduction="none")
        loss_giou = 1 - paired_generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes))
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": loss_giou.sum() / num_boxes}

    @torch.no_grad()
    def loss_cardinality(self, outputs: dict, targets: Sequence[dict], indices: Sequence[ImageMatch],
                         num_boxes: float, log: bool = True, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """``cardinality_error`` (logging only): mean |#queries whose argmax is not the last row - #targets|."""
        logits = outputs["pred_logits"]
        target_counts = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
        predicted_counts = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(predicted_counts.float(), target_counts.float())}

    def _output_sets(self, outputs: dict) -> list[tuple[str, dict]]:
        """(suffix, outputs) for the last layer, the earlier layers and the proposals, in that order."""
        sets = [("", {k: v for k, v in outputs.items() if k != "aux_outputs"})]
        sets += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        if "enc_outputs" in outputs:
            sets.append(("_enc", outputs["enc_outputs"]))
        return sets

    def forward(self, outputs: dict, targets: Sequence[dict],
                model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """All loss terms of all output sets, as ``{name + suffix: scalar}``.

        outputs: the detector's dict (``pred_logits [B, Q', R]``, ``pred_boxes [B, Q', 4]`` cxcywh,
        optional ``aux_outputs`` list and ``enc_outputs``); targets: per image ``labels [T_i]`` int64 and
        ``boxes [T_i, 4]`` normalised cxcywh; model: the model that made ``outputs`` (needed by the mask
        losses: the EMA copy itself when evaluating it).
        """
        return self.losses_and_matches(outputs, targets, model)[0]

    def losses_and_matches(self, outputs: dict, targets: Sequence[dict], model: nn.Module | None = None
                           ) -> tuple[dict[str, torch.Tensor], dict[str, list[ImageMatch]]]:
        """:meth:`forward`'s losses and the matchings they were computed on, keyed by output suffix
        (``""``, ``"_0"``, ..., ``"_enc"``): returned, not kept, so one criterion may serve many threads."""
        group_detr = self.group_detr if self.training else 1
        device = outputs["pred_logits"].device
        num_boxes = normalising_num_boxes(targets, group_detr, device)
        losses: dict[str, torch.Tensor] = {}
        matches: dict[str, list[ImageMatch]] = {}
        for suffix, output_set in self._output_sets(outputs):
            output_set = in_float32(output_set)
            indices = self.matcher(output_set, targets, group_detr=group_detr)
            matches[suffix] = indices
            device_indices = [(src.to(device), tgt.to(device)) for src, tgt in indices]
            for name in self.losses:
                terms = self.loss_functions[name](output_set, targets, device_indices, num_boxes, log=suffix == "",
                                                  model=model)
                losses.update({key + suffix: value for key, value in terms.items()})
        return losses, matches

    def weighted_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum(weight * loss)`` over the keys of ``losses`` that have a weight (in ``losses`` order)."""
        return sum(value * self.weight_dict[key] for key, value in losses.items() if key in self.weight_dict)


def loss_weights(train: TrainConfig, aux_loss: bool, dec_layers: int) -> dict[str, float]:
    """Weights of the weighted terms; suffixed copies (``_0..``, ``_enc``) only with ``aux_loss``."""
    base = {"loss_ce": train.cls_loss_coef, "loss_bbox": train.bbox_loss_coef, "loss_giou": train.giou_loss_coef}
    weights = dict(base)
    if aux_loss:
        for suffix in [f"_{i}" for i in range(dec_layers - 1)] + ["_enc"]:
            weights.update({key + suffix: value for key, value in base.items()})
    return weights


def build_criterion(model: ModelConfig, train: TrainConfig, *, frozen_detector: bool = False) -> SetCriterion:
    """The detection criterion of a run: loss weights, matcher costs and focal alpha from ``train``.

    A frozen detector (stage 2) runs in eval mode: one query group, and its aux/encoder outputs train nothing.
    """
    aux_loss = model.aux_loss and not frozen_detector
    matcher = HungarianMatcher(cost_class=train.set_cost_class, cost_bbox=train.set_cost_bbox,
                               cost_giou=train.set_cost_giou)
    return SetCriterion(model.num_classes, matcher, loss_weights(train, aux_loss, model.dec_layers),
                        focal_alpha=train.focal_alpha, group_detr=1 if frozen_detector else model.group_detr)
