"""Joint image/target augmentations for training and evaluation.

Every transform is a callable ``(image, target) -> (image, target)``. ``image`` is a PIL image or a
``[3, H, W]`` tensor; ``target`` holds ``boxes`` (``[N, 4]`` absolute x0, y0, x1, y1 pixels until
:class:`NormalizeBoxes`), ``labels``, ``area``, ``iscrowd``, ``size`` (h, w) and optionally ``masks``
(``[N, H, W]`` uint8, with ``has_mask`` ``[N]``). Boxes, areas and masks are always changed together.

Randomness comes from torch: each random transform takes an optional ``torch.Generator``; with
``None`` it uses torch's global generator, which ``DataLoader`` seeds per worker (so
``torch.manual_seed`` makes a run repeatable). Do not share one explicit generator between workers:
each worker would receive a copy in the same state and draw the same augmentations.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rfdetr.datasets.preprocess import normalize, to_float_chw
from rfdetr.util.box_ops import box_xyxy_to_cxcywh

ImageLike = Image.Image | torch.Tensor
Target = dict[str, torch.Tensor]
Transform = Callable[[ImageLike, Target], tuple[ImageLike, Target]]

# Training crop recipe: shorter side -> one of these, then a random crop of this size range.
TRAIN_RESIZE_SIDES = (400, 500, 600)
TRAIN_CROP_RANGE = (384, 600)


# ---- random draws ----------------------------------------------------------------------
def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (both inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _choice(values: Sequence, generator: torch.Generator | None):
    return values[_randint(0, len(values) - 1, generator)]


# ---- image helpers (PIL or tensor) -------------------------------------------------------
def image_size(image: ImageLike) -> tuple[int, int]:
    """(width, height) of a PIL image or ``[C, H, W]`` tensor."""
    if isinstance(image, Image.Image):
        return image.size
    return int(image.shape[-1]), int(image.shape[-2])


def _resize_image(image: ImageLike, width: int, height: int) -> ImageLike:
    if isinstance(image, Image.Image):
        return image.resize((width, height), Image.Resampling.BILINEAR)
    resized = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False,
                            antialias=True)[0]
    return resized.to(image.dtype) if image.dtype.is_floating_point else resized.round().clamp(0, 255).to(image.dtype)


def _crop_image(image: ImageLike, top: int, left: int, height: int, width: int) -> ImageLike:
    if isinstance(image, Image.Image):
        return image.crop((left, top, left + width, top + height))
    return image[..., top:top + height, left:left + width]


def _hflip_image(image: ImageLike) -> ImageLike:
    if isinstance(image, Image.Image):
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.flip(-1)


def resize_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour resize of ``[N, H, W]`` uint8 masks."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, height, width))
    resized = F.interpolate(masks[:, None].float(), size=(height, width), mode="nearest")[:, 0]
    return (resized > 0.5).to(masks.dtype)


# ---- geometric transforms ------------------------------------------------------------------
def resize(image: ImageLike, target: Target, width: int, height: int) -> tuple[ImageLike, Target]:
    """Resize to ``width x height`` (aspect not kept); boxes, area and masks follow."""
    old_width, old_height = image_size(image)
    image = _resize_image(image, width, height)
    target = dict(target)
    scale_x, scale_y = width / old_width, height / old_height
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y])
    if "area" in target:
        target["area"] = target["area"] * (scale_x * scale_y)
    if "masks" in target:
        target["masks"] = resize_masks(target["masks"], height, width)
    target["size"] = torch.tensor([height, width], dtype=torch.int64)
    return image, target


def crop(image: ImageLike, target: Target, top: int, left: int, height: int, width: int
         ) -> tuple[ImageLike, Target]:
    """Crop the region; boxes are clipped to it (not re-fitted to the cropped masks).

    Instances left with an empty box, or whose mask pixels all fall outside, are removed.
    """
    image = _crop_image(image, top, left, height, width)
    target = dict(target)
    target["size"] = torch.tensor([height, width], dtype=torch.int64)
    boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
    limits = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = torch.minimum(boxes, limits).clamp(min=0)
    target["boxes"] = boxes
    target["area"] = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if "masks" in target:
        had_pixels = target["masks"].flatten(1).any(1).bool()
        target["masks"] = target["masks"][:, top:top + height, left:left + width]
        # An instance whose mask was cut away goes too; one that never had a mask keeps its box.
        keep &= target["masks"].flatten(1).any(1).bool() | ~had_pixels
    for key in ("boxes", "labels", "area", "iscrowd", "masks", "has_mask"):
        if key in target:
            target[key] = target[key][keep]
    return image, target


def hflip(image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
    """Mirror left-right; boxes and masks follow."""
    width, _ = image_size(image)
    image = _hflip_image(image)
    target = dict(target)
    if "boxes" in target:
        x0, y0, x1, y1 = target["boxes"].unbind(-1)
        target["boxes"] = torch.stack([width - x1, y0, width - x0, y1], dim=-1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image, target


def _shorter_side_size(width: int, height: int, side: int, max_size: int | None) -> tuple[int, int]:
    """(width, height) with the shorter side ``side`` (capped so the longer side stays <= max_size)."""
    if max_size is not None:
        short, long = min(width, height), max(width, height)
        if long / short * side > max_size:
            side = int(round(max_size * short / long))
    if width <= height:
        return side, int(side * height / width)
    return int(side * width / height), side


# ---- transform objects ---------------------------------------------------------------------
class Compose:
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        if _uniform(self.generator) < self.p:
            return hflip(image, target)
        return image, target


class SquareResize:
    """Resize to ``s x s`` (aspect ratio not kept) with ``s`` drawn uniformly from ``scales``."""

    def __init__(self, scales: Sequence[int], generator: torch.Generator | None = None):
        if not scales:
            raise ValueError("SquareResize needs at least one scale")
        self.scales, self.generator = list(scales), generator

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        side = _choice(self.scales, self.generator)
        return resize(image, target, side, side)

    def __repr__(self) -> str:
        return f"SquareResize({self.scales})"


class RandomResize:
    """Resize so the shorter side is one of ``sizes`` (aspect kept; longer side capped at ``max_size``)."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None,
                 generator: torch.Generator | None = None):
        self.sizes, self.max_size, self.generator = list(sizes), max_size, generator

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        width, height = image_size(image)
        new_width, new_height = _shorter_side_size(width, height, _choice(self.sizes, self.generator), self.max_size)
        return resize(image, target, new_width, new_height)


class RandomSizeCrop:
    """Crop a random region whose width and height are uniform in ``[min_size, min(side, max_size)]``."""

    def __init__(self, min_size: int, max_size: int, generator: torch.Generator | None = None):
        self.min_size, self.max_size, self.generator = min_size, max_size, generator

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        width, height = image_size(image)
        crop_width = _randint(min(self.min_size, width), min(width, self.max_size), self.generator)
        crop_height = _randint(min(self.min_size, height), min(height, self.max_size), self.generator)
        top = _randint(0, height - crop_height, self.generator)
        left = _randint(0, width - crop_width, self.generator)
        return crop(image, target, top, left, crop_height, crop_width)


class RandomSelect:
    """Apply ``first`` with probability ``p``, else ``second``."""

    def __init__(self, first: Transform, second: Transform, p: float = 0.5,
                 generator: torch.Generator | None = None):
        self.first, self.second, self.p, self.generator = first, second, p, generator

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        if _uniform(self.generator) < self.p:
            return self.first(image, target)
        return self.second(image, target)


class ToTensor:
    """PIL RGB image -> ``[3, H, W]`` float32 in [0, 1]; tensors pass (uint8 is scaled to [0, 1])."""

    def __call__(self, image: ImageLike, target: Target) -> tuple[torch.Tensor, Target]:
        if isinstance(image, Image.Image):
            return to_float_chw(np.array(image.convert("RGB"))), target
        if image.dtype == torch.uint8:
            return image.float().div(255.0), target
        return image, target


class Normalize:
    """ImageNet mean/std normalisation of a ``[3, H, W]`` float tensor."""

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        return normalize(image), target


class NormalizeBoxes:
    """Boxes -> ``[N, 4]`` normalised (cx, cy, w, h), relative to the current image size. Apply last."""

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        width, height = image_size(image)
        target = dict(target)
        boxes = box_xyxy_to_cxcywh(target["boxes"])
        target["boxes"] = boxes / torch.tensor([width, height, width, height], dtype=torch.float32)
        return image, target


# ---- pipelines ---------------------------------------------------------------------------------
def multi_scale_sizes(resolution: int, patch_size: int, num_windows: int, expanded: bool = False,
                      native_resolution: int | None = None) -> list[int]:
    """Square training sides around ``resolution``, all multiples of ``block = patch_size * num_windows``.

    Upstream's set around the native resolution: ``native // block`` blocks with offsets ``-3..+4``
    (``-5..+5`` expanded), scaled by ``resolution / native`` and rounded to whole blocks; sides below
    ``2 * block`` are dropped. ``native_resolution=None`` takes ``resolution`` itself, which is
    upstream's rule at any resolution. Nano (384, 16, 2) -> 288..512; expanded 224..544; base
    (560, 14, 4) -> 392..784. Nano trained at 192 with native 384 -> 128..256 (upstream: 96..320,
    expanded 64..352).
    """
    block = patch_size * num_windows
    native = native_resolution or resolution
    scale = resolution / native
    offsets = range(-5, 6) if expanded else range(-3, 5)
    blocks = sorted({round((native // block + offset) * scale) for offset in offsets})
    return [count * block for count in blocks if count >= 2]


def train_scales(resolution: int, patch_size: int, num_windows: int, *, multi_scale: bool,
                 expanded_scales: bool, do_random_resize_via_padding: bool,
                 native_resolution: int | None = None) -> list[int]:
    """Sides the training SquareResize draws from.

    No multi-scale: ``[resolution]``. Multi-scale with per-sample sizes (resize via padding): all
    sizes. Otherwise only the largest size; the batch is resized per step (see ``resize_batch``).
    """
    if not multi_scale:
        return [resolution]
    scales = multi_scale_sizes(resolution, patch_size, num_windows, expanded_scales, native_resolution)
    return scales if do_random_resize_via_padding else [scales[-1]]


def train_transforms(scales: Sequence[int], generator: torch.Generator | None = None) -> Compose:
    """Flip -> (square resize | resize + random crop + square resize) -> tensor -> normalise."""
    return Compose([
        RandomHorizontalFlip(0.5, generator),
        RandomSelect(
            SquareResize(scales, generator),
            Compose([
                RandomResize(TRAIN_RESIZE_SIDES, generator=generator),
                RandomSizeCrop(*TRAIN_CROP_RANGE, generator=generator),
                SquareResize(scales, generator),
            ]),
            p=0.5, generator=generator,
        ),
        ToTensor(),
        Normalize(),
        NormalizeBoxes(),
    ])


def eval_transforms(resolution: int) -> Compose:
    """``resolution x resolution`` resize -> tensor -> normalise (validation and test)."""
    return Compose([SquareResize([resolution]), ToTensor(), Normalize(), NormalizeBoxes()])
