"""The RF-DETR detector: backbone + two-stage deformable decoder + class and box heads.

State-dict layout (the published checkpoint format): ``transformer.*``, ``class_embed.*``,
``bbox_embed.*``, ``refpoint_embed.weight``, ``query_feat.weight``, ``backbone.0.*``, and for upstream
1.11's segmentation models ``segmentation_head.*`` (:mod:`rfdetr.models.seg_head`).
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple, Sequence

import torch
from torch import nn

from rfdetr.config import ModelConfig
from rfdetr.models.backbone import Joiner, build_backbone
from rfdetr.models.seg_head import SegmentationHead
from rfdetr.models.transformer import MLP, Transformer, refine_boxes
from rfdetr.util.nested_tensor import NestedTensor, nested_tensor_from_images

# Focal-loss prior: new class logits start at sigmoid^-1(0.01).
CLASS_PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


class DetectorFeatures(NamedTuple):
    """What the detector computed on the way to its outputs: ``levels``, the projector maps
    ``[B, hidden_dim, h_l, w_l]`` (finest first); ``masks``, their padding ``[B, h_l, w_l]`` (True =
    padding); ``query_features [B, Q', hidden_dim]``, the last decoder layer's states."""

    levels: list[torch.Tensor]
    masks: list[torch.Tensor]
    query_features: torch.Tensor


class LWDETR(nn.Module):
    """Detector. ``num_classes`` is the number of class-head rows (config ``num_classes + 1``)."""

    def __init__(self, backbone: Joiner, transformer: Transformer, num_classes: int, num_queries: int,
                 group_detr: int, aux_loss: bool = True, segmentation_head: SegmentationHead | None = None):
        super().__init__()
        self.num_queries = num_queries
        self.group_detr = group_detr
        self.aux_loss = aux_loss
        hidden_dim = transformer.d_model
        self.transformer = transformer
        self.class_embed = nn.Linear(hidden_dim, num_classes)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.refpoint_embed = nn.Embedding(num_queries * group_detr, 4)
        self.query_feat = nn.Embedding(num_queries * group_detr, hidden_dim)
        self.backbone = backbone
        self.segmentation_head = segmentation_head
        self.reset_head_parameters()
        transformer.enc_out_bbox_embed.extend(copy.deepcopy(self.bbox_embed) for _ in range(group_detr))
        transformer.enc_out_class_embed.extend(copy.deepcopy(self.class_embed) for _ in range(group_detr))

    @property
    def num_class_rows(self) -> int:
        return self.class_embed.out_features

    def reset_head_parameters(self) -> None:
        """Class prior bias, zero last box layer (start at the reference box), zero query box deltas."""
        nn.init.constant_(self.class_embed.bias, CLASS_PRIOR_BIAS)
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        nn.init.zeros_(self.refpoint_embed.weight)

    def forward(self, samples: NestedTensor | torch.Tensor | Sequence[torch.Tensor]) -> dict:
        """Run the detector on normalised images.

        samples: a :class:`NestedTensor`, a ``[B, 3, H, W]`` tensor or a list of ``[3, h, w]`` tensors
        (padded into a batch). Returns, with ``Q' = num_queries * group_detr`` in training and
        ``num_queries`` at eval:

        - ``pred_logits [B, Q', R]`` class logits (R = class-head rows),
        - ``pred_boxes [B, Q', 4]`` boxes as normalised cx, cy, w, h of each image's valid area,
        - ``aux_outputs`` (if ``aux_loss``): one ``{pred_logits, pred_boxes}`` per earlier decoder layer,
        - ``enc_outputs``: ``{pred_logits, pred_boxes}`` of the selected two-stage proposals,
        - with a ``segmentation_head``: ``pred_masks [B, Q, H / r, W / r]`` mask logits of every query at
          eval; in training the embeddings they are made of, for every decoder layer (:meth:`_add_masks`).
        """
        return self.forward_with_features(samples)[0]

    def forward_with_features(self, samples: NestedTensor | torch.Tensor | Sequence[torch.Tensor]
                              ) -> tuple[dict, DetectorFeatures]:
        """:meth:`forward`'s outputs and the :class:`DetectorFeatures` they were computed from (what a
        mask head reads; returned as values, so one model can serve many threads)."""
        samples = nested_tensor_from_images(samples)
        levels, masks = self.backbone(samples)
        queries = self.refpoint_embed.weight.shape[0] if self.training else self.num_queries
        decoded = self.transformer(levels, masks, self.refpoint_embed.weight[:queries],
                                   self.query_feat.weight[:queries])
        hs = decoded["hs"]
        boxes = refine_boxes(decoded["reference"].unsqueeze(0), self.bbox_embed(hs))
        logits = self.class_embed(hs)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        if self.segmentation_head is not None:
            self._add_masks(out, levels[0], hs, samples.tensors.shape[-2:])
        out["enc_outputs"] = {"pred_logits": decoded["enc_logits"], "pred_boxes": decoded["enc_boxes"]}
        return out, DetectorFeatures(levels, masks, hs[-1])

    def _add_masks(self, out: dict, features: torch.Tensor, hs: torch.Tensor, image_size: Sequence[int]) -> None:
        """The mask outputs of the built-in head: dense ``pred_masks`` at eval; in training, per decoder layer
        (earlier ones in ``aux_outputs``), the embeddings whose products are the masks (``pred_mask_pixels
        [B, C, Hm, Wm]``, ``pred_mask_queries [B, Q', C]``, ``pred_mask_bias [1]``), so that the loss computes
        the matched queries' masks only."""
        head = self.segmentation_head
        if not self.training:
            out["pred_masks"] = head(features, hs, image_size)[-1]
            return
        layers = head.layer_embeddings(features, hs, image_size, all_layers=self.aux_loss)
        for output_set, (pixels, queries) in zip([*out.get("aux_outputs", []), out][-len(layers):], layers):
            output_set.update(pred_mask_pixels=pixels, pred_mask_queries=queries, pred_mask_bias=head.bias)


def build_detector(config: ModelConfig) -> LWDETR:
    """A randomly initialised detector of the given geometry (weights come only from files)."""
    backbone = build_backbone(config)
    backbone[0].encoder.reset_parameters()
    transformer = Transformer(
        d_model=config.hidden_dim,
        sa_nheads=config.sa_nheads,
        ca_nheads=config.ca_nheads,
        num_queries=config.num_queries,
        num_decoder_layers=config.dec_layers,
        dim_feedforward=config.dim_feedforward,
        num_feature_levels=config.num_feature_levels,
        dec_n_points=config.dec_n_points,
        group_detr=config.group_detr,
    )
    head = (SegmentationHead(config.hidden_dim, config.dec_layers, config.mask_downsample_ratio)
            if config.segmentation_head else None)
    model = LWDETR(backbone, transformer, num_classes=config.num_classes + 1, num_queries=config.num_queries,
                   group_detr=config.group_detr, aux_loss=config.aux_loss, segmentation_head=head)
    model.config = config  # what it was built from (checkpoint messages, wrappers)
    return model
