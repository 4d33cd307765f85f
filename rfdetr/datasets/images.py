"""Reading images into RGB pixels: the one rule that training, ``validate_setup.py`` and ``predict()`` share.

The rule (for files; in-memory PIL images follow it from the second point on):

- A file is turned upright by its EXIF orientation (the way viewers and annotation tools show it);
  an animated file gives its first frame (where ``Image.open`` starts).
- 8-bit modes (``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGB``, ``RGBA``, ``CMYK``, ``YCbCr``, ...) give
  ``H x W x 3`` uint8 through PIL's RGB conversion: gray is repeated, palettes are looked up, 1-bit
  pixels are 0 or 255, alpha and palette transparency are dropped (the colour under them is kept,
  not blended with a background).
- 16-bit modes (``I;16``, ``I;16B``, ``I;16L``, and ``I``: PIL's 32-bit integer mode, in which it
  opens 16-bit TIFF files) give float32 ``value / 65535`` (``I`` values outside 0..65535 are
  clipped). No quantisation to 8 bits: training and predict() both see these floats. uint16 arrays
  given to predict() are scaled the same way (:func:`scale_16_bit`).
- ``F`` (32-bit float) gives the stored values as float32; they must lie in [0, 1].

8-bit sources stay uint8, so callers convert to float only after resizing (predict()) or keep using
PIL images (the training transforms). JPEG files are decoded by OpenCV (libjpeg-turbo: several
times faster than PIL, EXIF orientation applied too) when it is installed; a JPEG that does not end
with its end-of-image marker (a truncated file, or one with bytes after the image) is left to PIL,
which raises an error for a truncated one. Whichever decoder reads a file, training and predict()
get its pixels from the same one.

A missing file raises ``FileNotFoundError``; a file that does not decode, or breaks the rule (a
float image outside [0, 1]), raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
MAX_16_BIT = 65535.0
ORIENTATION_TAG = 0x0112  # EXIF orientation; 5..8 turn the image a quarter (width and height swap)
_QUARTER_TURNS = (5, 6, 7, 8)
# What PIL raises for a file that is not an image, is truncated or is corrupt.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> upright ``H x W x 3`` RGB pixels: uint8, or float32 in [0, 1] (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    with open(path, "rb") as file:
        is_jpeg = file.read(len(JPEG_START)) == JPEG_START
    if is_jpeg:
        pixels = _decode_jpeg(np.fromfile(path, dtype=np.uint8))
        if pixels is not None:
            return pixels
    try:
        with Image.open(path) as opened:
            return image_pixels(ImageOps.exif_transpose(opened))
    except DECODE_ERRORS as error:
        raise ValueError(f"cannot read image file {path}: {error}") from error


def image_pixels(image: Image.Image) -> np.ndarray:
    """A PIL image as it is (no EXIF turn) -> ``H x W x 3`` uint8 or float32 RGB (module docstring)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return _gray_to_rgb(scale_16_bit(np.asarray(image)))
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (0.0 <= low and high <= 1.0):  # NaN fails both comparisons
            raise ValueError(f"float pixel values must be in [0, 1], got [{low:.3g}, {high:.3g}]")
        return _gray_to_rgb(values)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image)  # a writable copy


def scale_16_bit(values: np.ndarray) -> np.ndarray:
    """16-bit intensities (any integer dtype) -> float32 ``value / 65535``, clipped to [0, 1]."""
    return (values.astype(np.float32) / np.float32(MAX_16_BIT)).clip(0.0, 1.0)


def upright_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file after its EXIF orientation, from the header alone.

    Raises what PIL raises for a file it cannot identify (see :data:`DECODE_ERRORS`).
    """
    with Image.open(path) as image:
        width, height = image.size
        turned = image.getexif().get(ORIENTATION_TAG) in _QUARTER_TURNS
    return (height, width) if turned else (width, height)


def _gray_to_rgb(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[:, :, None], 3, axis=2)


def _decode_jpeg(data: np.ndarray) -> np.ndarray | None:
    """OpenCV's decode of a complete JPEG file's bytes; ``None`` when PIL should read it instead."""
    if bytes(data[-len(JPEG_END):]) != JPEG_END:
        return None  # some OpenCV builds return a truncated file grey-filled instead of failing
    try:
        import cv2
    except ImportError:
        return None
    try:
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)  # applies the EXIF orientation
    except cv2.error:
        return None
    if decoded is None:  # an unusual JPEG flavour, left to PIL (or to its error)
        return None
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
