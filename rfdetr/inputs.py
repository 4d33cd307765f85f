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
_JPEG_MAGIC = b"\xff\xd8\xff"


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
    is what keeps preprocessing cheap (see :func:`rfdetr.preprocess.resize_normalize`).
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
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    with open(path, "rb") as file:
        is_jpeg = file.read(3) == _JPEG_MAGIC
    if is_jpeg:  # OpenCV's libjpeg-turbo: the same pixels as PIL, several times faster; applies EXIF
        import cv2

        decoded = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
        if decoded is not None:  # None: an unusual JPEG flavour, left to PIL (or to its error)
            return _from_array(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), where)
    try:
        with Image.open(path) as opened:
            opened.load()
            return _from_pil(ImageOps.exif_transpose(opened), where)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image file {path}: {error}") from error


def _from_pil(image: Image.Image, where: str) -> torch.Tensor:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        return _from_array((array / scale).clip(0.0, 1.0), where)
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, P, RGBA (alpha dropped), CMYK, ...
    return _from_array(np.array(image), where)  # np.array: a writable copy torch can share


def _from_array(array: np.ndarray, where: str) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{where}: expected an H x W x 3 RGB array (or 1 / 4 channels), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{where}: the image is empty ({array.shape})")
    array = array[:, :, :3] if array.shape[2] == 4 else array
    if array.dtype == np.uint8:
        if not array.flags.writeable:
            array = array.copy()  # torch.from_numpy needs writable memory
        # A [3, H, W] view of the H x W x 3 memory (channels-last strides): no copy here.
        return torch.from_numpy(array).permute(2, 0, 1).expand(3, -1, -1)
    if array.dtype == np.uint16:
        tensor = torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1).div(65535.0)
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
