"""A stand-in for ``DETRsegm.predict_masks`` whose masks are known functions of image coordinates."""

from __future__ import annotations

import math
from typing import Callable

import torch

STRIDE = 4
# render(image, query, u, v) -> logits; (u, v) are the image's normalised coordinates (> 1 on padding).
Render = Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]


def fractions_of(sizes: list[tuple[int, int]]) -> list[tuple[float, float]]:
    """(height, width) share of the padded canvas (the largest size) that each image fills."""
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    return [(h / height, w / width) for h, w in sizes]


class FakeContext:
    """A mask context as ``DETRsegm`` makes one, reduced to what the fake reads: the batch's padding mask."""

    def __init__(self, image_mask: torch.Tensor):
        self.image_mask = image_mask


class FakeMaskModel:
    """``predict_masks`` evaluates ``render`` at the centres of the stride-4 cells of the canvas, in
    the coordinates of the image (``fractions`` of the canvas it fills); records every requested
    (image, query) pair. Logits are scaled by a leaf tensor so that tests can check gradients."""

    def __init__(self, fractions: list[tuple[float, float]], render: Render):
        self.fractions = torch.tensor(fractions, dtype=torch.float32)
        self.render = render
        self.scale = torch.ones((), requires_grad=True)
        self.requests: list[list[tuple[int, int]]] = []

    def predict_masks(self, context, batch_index: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
        height, width = context.image_mask.shape[-2:]
        rows, cols = math.ceil(height / STRIDE), math.ceil(width / STRIDE)
        pairs = list(zip(batch_index.tolist(), query_index.tolist()))
        self.requests.append(pairs)
        y = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
        x = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols
        masks = []
        for image, query in pairs:
            fraction_h, fraction_w = self.fractions[image].tolist()
            v, u = torch.meshgrid(y * height / (rows * STRIDE) / fraction_h,
                                  x * width / (cols * STRIDE) / fraction_w, indexing="ij")
            masks.append(self.render(image, query, u, v))
        return torch.stack(masks) * self.scale if masks else torch.zeros(0, rows, cols)
