"""Preprocessing reproduces the golden model inputs from the sample photos."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from conftest import golden

from rfdetr.config import SIZES
from rfdetr.datasets.preprocess import normalize, preprocess, resize, resize_normalize, to_float_chw


@pytest.mark.parametrize("size", SIZES)
def test_photos_become_the_golden_inputs(size):
    g = golden(size)
    resolution = g["meta"]["resolution"]
    assert torch.equal(preprocess(skimage.data.astronaut(), resolution)[None], g["input_a"])
    coffee = skimage.data.coffee()
    h, w = coffee.shape[:2]
    small_h = round(0.75 * resolution * h / max(h, w))
    small_w = round(0.75 * resolution * w / max(h, w))
    assert torch.equal(resize(normalize(to_float_chw(coffee)), small_h, small_w), g["input_b"][1])


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="H x W x 3"):
        preprocess(np.zeros((4, 4), dtype=np.uint8), 32)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((4, 4, 3), dtype=np.float32), 32)


@pytest.mark.parametrize("size", [(512, 512), (1080, 1920), (200, 150)])
def test_fast_resize_normalize_equals_the_reference_order(size):
    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)
    pixels = torch.nn.functional.interpolate(photo[None].float(), size=size, mode="nearest")[0].to(torch.uint8)
    reference = resize(normalize(pixels.float() / 255), 384, 384)
    channels_last = pixels.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # how predict() holds arrays
    for layout in (pixels, channels_last):
        torch.testing.assert_close(resize_normalize(layout, 384, 384), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(resize_normalize(pixels.float() / 255, 384, 384), reference, atol=1e-5, rtol=0)
