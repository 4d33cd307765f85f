"""Turning what users pass to ``predict()`` into ``[3, H, W]`` float RGB tensors in [0, 1].

Accepted: a file path, a PIL image, an ``H x W x C`` numpy array (uint8, uint16, or float in
[0, 1]; C = 1, 3 or 4; also ``H x W`` grayscale), a ``[C, H, W]`` float tensor in [0, 1], or a
list of these. Grayscale is repeated to RGB, alpha is dropped, 16-bit is scaled by 1/65535, and
files are rotated by their EXIF orientation. Anything else raises a ``ValueError`` (or
``FileNotFoundError``) that names the input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor


def as_image_list(images: ImageInput | Sequence[ImageInput]) -> tuple[list[ImageInput], bool]:
    """``(list of single images, whether the caller passed a list)``; an empty list is an error."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("predict() got an empty list of images")
        return list(images), True
    return [images], False


def load_image(image: ImageInput, index: int = 0) -> torch.Tensor:
    """One input -> ``[3, H, W]`` float32 RGB in [0, 1] (CPU)."""
    where = f"image {index}"
    if isinstance(image, (str, os.PathLike)):
        return _from_pil(_open(Path(image)), f"{where} ({image})")
    if isinstance(image, Image.Image):
        return _from_pil(image, where)
    if isinstance(image, np.ndarray):
        return _from_array(image, where)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image, where)
    raise ValueError(f"{where}: unsupported type {type(image).__name__}; pass a path, PIL image, "
                     "H x W x 3 numpy array or [3, H, W] tensor")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image file {path}: {error}") from error


def _from_pil(image: Image.Image, where: str) -> torch.Tensor:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        return _from_array((array / scale).clip(0.0, 1.0), where)
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, P, RGBA (alpha dropped), CMYK, ...
    return _from_array(np.asarray(image), where)


def _from_array(array: np.ndarray, where: str) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{where}: expected an H x W x 3 RGB array (or 1 / 4 channels), got shape {array.shape}")
    array = array[:, :, :3] if array.shape[2] == 4 else array
    if not array.flags.writeable:
        array = array.copy()  # torch.from_numpy needs writable memory
    if array.dtype == np.uint8:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div(255.0)
    elif array.dtype == np.uint16:
        tensor = torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1).div(65535.0)
    elif np.issubdtype(array.dtype, np.floating):
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    else:
        raise ValueError(f"{where}: unsupported array dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    return _checked_rgb(tensor, where)


def _from_tensor(tensor: torch.Tensor, where: str) -> torch.Tensor:
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"{where}: expected a [3, H, W] tensor, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{where}: expected a float tensor in [0, 1], got {tensor.dtype}")
    return _checked_rgb(tensor.detach().float().cpu(), where)


def _checked_rgb(tensor: torch.Tensor, where: str) -> torch.Tensor:
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if tensor.numel() == 0:
        raise ValueError(f"{where}: the image is empty ({tuple(tensor.shape)})")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{where}: the image contains NaN or infinite values")
    low, high = tensor.min().item(), tensor.max().item()
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{where}: float pixel values must be in [0, 1], got [{low:.3g}, {high:.3g}]; "
                         "divide 0-255 images by 255")
    return tensor.contiguous()
