"""Batching: padded image batches with targets, and the per-step multi-scale resize."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from rfdetr.util.nested_tensor import NestedTensor, nested_tensor_from_images, resize_mask


def collate_fn(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[NestedTensor, list[dict]]:
    """``[(image [3, h, w], target), ...]`` -> (zero-padded ``NestedTensor`` batch, list of targets).

    Images are padded at the bottom/right to the largest height and width; the mask is ``True`` on
    padding. Targets are returned unchanged (their boxes stay normalised to each image's own size).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return nested_tensor_from_images(images), targets


def resize_batch(samples: NestedTensor, size: int | tuple[int, int]) -> NestedTensor:
    """Resize a whole batch to ``size`` (a side or (h, w)): bilinear images, nearest padding mask.

    Normalised box targets need no change; target masks are not resized here.
    """
    height, width = (size, size) if isinstance(size, int) else size
    tensors = F.interpolate(samples.tensors, size=(height, width), mode="bilinear", align_corners=False)
    mask = resize_mask(samples.mask, (height, width))
    return NestedTensor(tensors, mask)


def random_scale(scales: Sequence[int], generator: torch.Generator | None = None) -> int:
    """One side drawn uniformly from ``scales`` (for the per-step batch resize)."""
    if not scales:
        raise ValueError("no scales to choose from")
    return int(scales[int(torch.randint(len(scales), (), generator=generator))])
