"""Padded image batches with a padding mask (``True`` = padding), as DETR models consume them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass
class NestedTensor:
    """A batch of images padded at the bottom/right to a common size.

    tensors: ``[B, 3, H, W]`` float images; mask: ``[B, H, W]`` bool, ``True`` on padded pixels.
    """

    tensors: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> "NestedTensor":
        return NestedTensor(self.tensors.to(device), self.mask.to(device))

    @property
    def batch_size(self) -> int:
        return self.tensors.shape[0]


def nested_tensor_from_images(images: torch.Tensor | Sequence[torch.Tensor] | NestedTensor) -> NestedTensor:
    """Batch ``images`` (a ``[B, 3, H, W]`` tensor or a list of ``[3, h, w]`` tensors) with zero padding."""
    if isinstance(images, NestedTensor):
        return images
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"expected a [B, 3, H, W] tensor, got shape {tuple(images.shape)}")
        batch, _, height, width = images.shape
        return NestedTensor(images, torch.zeros(batch, height, width, dtype=torch.bool, device=images.device))
    if len(images) == 0:
        raise ValueError("cannot batch an empty list of images")
    for index, image in enumerate(images):
        if image.dim() != 3:
            raise ValueError(f"image {index}: expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
    channels = images[0].shape[0]
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    first = images[0]
    tensors = first.new_zeros((len(images), channels, height, width))
    mask = torch.ones((len(images), height, width), dtype=torch.bool, device=first.device)
    for image, padded, image_mask in zip(images, tensors, mask):
        padded[:, : image.shape[1], : image.shape[2]].copy_(image)
        image_mask[: image.shape[1], : image.shape[2]] = False
    return NestedTensor(tensors, mask)


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a ``[B, H, W]`` bool mask to ``size`` = (h, w)."""
    return F.interpolate(mask[None].float(), size=tuple(size)).to(torch.bool)[0]
