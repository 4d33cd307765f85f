"""Turning what users pass to ``predict()`` into ``[3, H, W]`` float RGB tensors in [0, 1].

Accepted: a file path, a PIL image, an ``H x W x C`` numpy array (uint8, uint16, or float in
[0, 1]; C = 1, 3 or 4; also ``H x W`` grayscale; views such as ``bgr[..., ::-1]`` too), a
``[C, H, W]`` float tensor in [0, 1], or a list of these. Files and PIL images are read by
:mod:`rfdetr.datasets.images`, the reader training uses too (EXIF orientation, 16-bit scaling, palette,
CMYK and alpha handling are defined there); arrays follow the same rule: grayscale is repeated to
RGB, alpha is dropped, 16-bit is scaled by 1/65535. Anything else raises a ``ValueError`` (or
``FileNotFoundError``) that names the input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from rfdetr.datasets.images import image_pixels, read_image, scale_16_bit

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor


def as_image_list(images: ImageInput | Sequence[ImageInput]) -> tuple[list[ImageInput], bool]:
    """``(list of single images, whether the caller passed a list)``; an empty list is an error."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("predict() got an empty list of images")
        return list(images), True
    return [images], False


def load_image(image: ImageInput, index: int = 0) -> torch.Tensor:
    """One input -> contiguous ``[3, H, W]`` float32 RGB in [0, 1] (CPU)."""
    pixels = load_pixels(image, index)
    return (pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels).contiguous()


def load_pixels(image: ImageInput, index: int = 0) -> torch.Tensor:
    """One input -> ``[3, H, W]`` RGB, uint8 for 8-bit sources (no copy of arrays) or float32 in [0, 1].

    ``predict()`` uses this form: converting a large photo to float only after it has been resized
    is what keeps preprocessing cheap (see :func:`rfdetr.datasets.preprocess.resize_normalize`).
    """
    where = f"image {index}"
    if isinstance(image, (str, os.PathLike)):
        return _from_file(Path(image), f"{where} ({image})")
    if isinstance(image, Image.Image):
        return _from_pil(image, where)
    if isinstance(image, np.ndarray):
        return _from_array(image, where)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image, where)
    raise ValueError(f"{where}: unsupported type {type(image).__name__}; pass a path, PIL image, "
                     "H x W x 3 numpy array or [3, H, W] tensor")


def _from_file(path: Path, where: str) -> torch.Tensor:
    return _from_array(read_image(path), where)  # its errors name the file


def _from_pil(image: Image.Image, where: str) -> torch.Tensor:
    try:
        pixels = image_pixels(image)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error
    return _from_array(pixels, where)


def _from_array(array: np.ndarray, where: str) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{where}: expected an H x W x 3 RGB array (or 1 / 4 channels), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{where}: the image is empty ({array.shape})")
    array = array[:, :, :3] if array.shape[2] == 4 else array
    if array.dtype == np.uint8:
        if not array.flags.writeable or any(stride < 0 for stride in array.strides):
            array = array.copy()  # torch.from_numpy needs writable memory and no reversed axes
        # A [3, H, W] view of the H x W x 3 memory (channels-last strides): no copy here.
        return torch.from_numpy(array).permute(2, 0, 1).expand(3, -1, -1)
    if array.dtype == np.uint16:
        tensor = torch.from_numpy(scale_16_bit(array)).permute(2, 0, 1)
    elif np.issubdtype(array.dtype, np.floating):
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    else:
        raise ValueError(f"{where}: unsupported array dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    return _checked_unit_float(tensor, where)


def _from_tensor(tensor: torch.Tensor, where: str) -> torch.Tensor:
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"{where}: expected a [3, H, W] tensor, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{where}: expected a float tensor in [0, 1], got {tensor.dtype}")
    if tensor.numel() == 0:
        raise ValueError(f"{where}: the image is empty ({tuple(tensor.shape)})")
    return _checked_unit_float(tensor.detach().float().cpu(), where)


def _checked_unit_float(tensor: torch.Tensor, where: str) -> torch.Tensor:
    low, high = torch.aminmax(tensor)  # NaN propagates into both
    low, high = low.item(), high.item()
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{where}: the image contains NaN or infinite values")
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{where}: float pixel values must be in [0, 1], got [{low:.3g}, {high:.3g}]; "
                         "divide 0-255 images by 255")
    return tensor.expand(3, -1, -1)
