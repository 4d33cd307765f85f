"""Image preprocessing shared by inference, demos and benchmarks.

What the published models expect: RGB in [0, 1] -> ImageNet normalisation -> bilinear,
antialiased resize to ``resolution x resolution`` (normalise first, then resize; the aspect
ratio is not kept). Pure torch; equal to torchvision's ``resize(antialias=True)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float_chw(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 RGB array -> ``[3, H, W]`` float32 in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB array, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device)[:, None, None]
    return (image - mean) / std


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, antialiased, align_corners=False resize of a ``[3, H, W]`` tensor."""
    return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def resize_normalize(pixels: torch.Tensor, height: int, width: int, antialias: bool = True) -> torch.Tensor:
    """``[3, H, W]`` uint8, or float in [0, 1] -> normalised, resized ``[3, height, width]`` float32.

    The fast form of ``resize(normalize(pixels / 255))`` used by ``predict()``: both steps are linear
    and the resize weights sum to one, so they commute; resizing first touches the full-resolution
    image once (uint8 -> float inside the resize) instead of three times. Equal to the reference
    order up to float rounding (~1e-6), which the tests check. ``antialias=False``: a plain bilinear
    resize, as upstream's predict from 1.9 does.
    """
    is_uint8 = pixels.dtype == torch.uint8
    image = pixels.float() if is_uint8 else pixels  # keeps channels-last strides: the fast resize path
    image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False,
                          antialias=antialias)[0]
    return normalize(image / 255.0 if is_uint8 else image).contiguous()


def preprocess(image: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 ``H x W x 3`` RGB -> normalised ``[3, resolution, resolution]`` model input."""
    return resize(normalize(to_float_chw(image)), resolution, resolution)
