"""Instance segmentation as a wrapper around a detector (DETR's ``DETRsegm`` recipe).

The detector knows nothing of masks. :class:`DETRsegm` runs it unchanged, returns what a mask head
needs (:class:`MaskContext`, tensors only) with its outputs and computes masks only when asked
(:meth:`DETRsegm.predict_masks`), for chosen (image, query) pairs: the matched queries in the loss,
the top-k detections in post-processing. Never for all queries.

No per-call state: the detector hands its features back as values
(:meth:`~rfdetr.models.lwdetr.LWDETR.forward_with_features`), no hook records them and no attribute
is written during a call, so one model object may serve many threads; whoever computes masks calls
the model that ran (an EMA copy's own head when evaluating it).

Two-stage training: ``DETRsegm(detector, freeze_detr=True)`` keeps the detector in eval mode with
no gradients (its outputs are bit-identical to the bare detector's); ``freeze_detr=False`` trains
everything at once. State dict: the detector under ``detr.*`` plus ``bbox_attention.*``,
``image_stem.*`` and ``mask_head.*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.config import ModelConfig
from rfdetr.models.lwdetr import LWDETR
from rfdetr.models.mask_geometry import valid_fractions
from rfdetr.models.mask_heads import MASK_HEADS, ImageStem, MHAttentionMap
from rfdetr.util.nested_tensor import NestedTensor, nested_tensor_from_images

# Mask logits are predicted on the stride-4 grid of the padded input (384 px -> 96 x 96).
MASK_STRIDE = 4


@dataclass(frozen=True)
class MaskContext:
    """Everything :meth:`DETRsegm.predict_masks` needs, per batch (B images, Q' queries): tensors only.

    memory ``[B, C, h, w]``: the coarsest projector level; memory_mask ``[B, h, w]`` its padding
    (True = padding); query_features ``[B, Q', C]``: last decoder layer states, in the order of
    ``pred_logits``; query_boxes ``[B, Q', 4]``: their ``pred_boxes`` (detached); fine_features:
    ``([B, c8, H/8, W/8], [B, c4, H/4, W/4])`` image-stem maps (stride 8 also holds any finer
    projector level); image_size ``(H, W)`` of the padded batch; image_mask ``[B, H, W]`` its
    padding; autocast_dtype: the autocast the forward ran under (None: none), which
    :meth:`DETRsegm.predict_masks` runs under again, since post-processing calls it after the
    forward's autocast has ended.
    """

    memory: torch.Tensor
    memory_mask: torch.Tensor
    query_features: torch.Tensor
    query_boxes: torch.Tensor
    fine_features: tuple[torch.Tensor, torch.Tensor]
    image_size: tuple[int, int]
    image_mask: torch.Tensor
    autocast_dtype: torch.dtype | None = None

    @property
    def mask_size(self) -> tuple[int, int]:
        """``(H4, W4)``: the size of the predicted mask logits."""
        return tuple(self.fine_features[1].shape[-2:])


class DETRsegm(nn.Module):
    """A detector plus a mask head. See :meth:`forward` and :meth:`predict_masks`."""

    def __init__(self, detr: LWDETR, *, freeze_detr: bool = True, mask_head: Literal["detr", "light"] = "detr",
                 mask_chunk: int = 32, image_stem: nn.Module | None = None):
        """image_stem: the module that gives the stride-8 and stride-4 maps (``out_channels``),
        default :class:`~rfdetr.models.mask_heads.ImageStem`."""
        super().__init__()
        if mask_head not in MASK_HEADS:
            raise ValueError(f"unknown mask_head {mask_head!r}; choose one of {', '.join(MASK_HEADS)}")
        if mask_chunk < 1:
            raise ValueError(f"mask_chunk must be >= 1, got {mask_chunk}")
        self.detr = detr
        self.freeze_detr = freeze_detr
        self.mask_chunk = mask_chunk
        cross_attn = detr.transformer.decoder.layers[0].cross_attn
        hidden_dim, num_heads = detr.transformer.d_model, cross_attn.n_heads
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, num_heads)
        self.image_stem = image_stem if image_stem is not None else ImageStem()
        # Projector levels finer than the memory (large: P3) join the stem's stride-8 map.
        stride8_channels = self.image_stem.out_channels[1] + hidden_dim * (cross_attn.n_levels - 1)
        fine_channels = (stride8_channels, self.image_stem.out_channels[0])
        self.mask_head = MASK_HEADS[mask_head](hidden_dim, num_heads, fine_channels)
        if freeze_detr:
            detr.requires_grad_(False)
            detr.eval()

    @property
    def num_queries(self) -> int:
        return self.detr.num_queries

    @property
    def group_detr(self) -> int:
        return self.detr.group_detr

    @property
    def config(self) -> ModelConfig:
        """The detector's :class:`ModelConfig` (``AttributeError`` if it was built without one)."""
        return self.detr.config

    def train(self, mode: bool = True) -> "DETRsegm":
        """Set train/eval mode; a frozen detector always stays in eval mode (group 0, no dropout)."""
        super().train(mode)
        if self.freeze_detr:
            self.detr.eval()
        return self

    def forward(self, samples: NestedTensor | torch.Tensor | Sequence[torch.Tensor]) -> dict:
        """Run the detector and return the mask context; masks are computed by :meth:`predict_masks`.

        Returns the detector's outputs unchanged (``pred_logits [B, Q', R]``, ``pred_boxes [B, Q', 4]``,
        ``aux_outputs``, ``enc_outputs``; ``Q' = num_queries * group_detr`` when the detector trains,
        ``num_queries`` otherwise, in particular always for a frozen detector) plus
        ``mask_context``: a :class:`MaskContext` for these images and queries.
        """
        samples = nested_tensor_from_images(samples)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_detr):
            outputs, features = self.detr.forward_with_features(samples)
        levels = features.levels
        stride8, stride4 = self.image_stem(samples.tensors)
        if len(levels) > 1:
            finer = [F.interpolate(level, size=stride8.shape[-2:], mode="bilinear", align_corners=False)
                     for level in levels[:-1]]
            stride8 = torch.cat([stride8, *finer], dim=1)
        device_type = levels[-1].device.type
        outputs["mask_context"] = MaskContext(
            memory=levels[-1],
            memory_mask=features.masks[-1],
            query_features=features.query_features,
            query_boxes=outputs["pred_boxes"].detach(),
            fine_features=(stride8, stride4),
            image_size=tuple(samples.tensors.shape[-2:]),
            image_mask=samples.mask,
            autocast_dtype=(torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                            else None),
        )
        return outputs

    def predict_masks(self, mask_context: MaskContext, batch_index: torch.Tensor,
                      query_index: torch.Tensor) -> torch.Tensor:
        """Mask logits ``[N, H4, W4]`` (stride 4 of the padded batch) for queries ``query_index [N]`` of
        images ``batch_index [N]`` (both int64), from ``mask_context`` of this model's forward.

        Runs under the autocast that forward ran under (``mask_context.autocast_dtype``; the logits are
        then cast to fp32); queries go through the head ``mask_chunk`` at a time."""
        if mask_context.autocast_dtype is None:
            return self._mask_logits(mask_context, batch_index, query_index)
        with torch.autocast(mask_context.memory.device.type, dtype=mask_context.autocast_dtype):
            return self._mask_logits(mask_context, batch_index, query_index).float()

    def _mask_logits(self, context: MaskContext, batch_index: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
        if batch_index.shape != query_index.shape or batch_index.dim() != 1:
            raise ValueError(f"batch_index {tuple(batch_index.shape)} and query_index {tuple(query_index.shape)} "
                             "must be 1-D of equal length")
        if batch_index.numel() == 0:
            return context.memory.new_zeros((0, *context.mask_size))
        keys = self.bbox_attention.project_keys(context.memory)
        prepared = self.mask_head.prepare(context.memory, context.fine_features)
        queries = context.query_features[batch_index, query_index]
        boxes = context.query_boxes[batch_index, query_index]
        fractions = valid_fractions(context.image_mask)[batch_index]
        logits = []
        for start in range(0, batch_index.numel(), self.mask_chunk):
            chunk = slice(start, start + self.mask_chunk)
            attention = self.bbox_attention.attend(queries[chunk], keys, context.memory_mask, batch_index[chunk])
            logits.append(self.mask_head(attention, prepared, batch_index[chunk], boxes[chunk], fractions[chunk]))
        return torch.cat(logits)
