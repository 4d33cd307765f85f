"""The mask rule (rfdetr.datasets.coco_masks): which COCO segmentations are usable masks, and their RLE."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from rfdetr.datasets.coco_masks import (
    MALFORMED_POLYGONS,
    MALFORMED_RLE,
    NO_IMAGE_SIZE,
    NO_PIXELS,
    NO_SEGMENTATION,
    RLE_SIZE_MISMATCH,
    box_rle,
    compressed_counts,
    count_masks,
    decode_rle,
    mask_rle,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
HEIGHT, WIDTH = 30, 40


def run_lengths(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed counts of a mask: alternating 0 and 1 runs in column-major order, 0s first."""
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return ([0] + runs) if flat[0] else runs


@pytest.mark.parametrize("seed", range(5))
def test_compressed_counts_read_what_pycocotools_writes(seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((HEIGHT, WIDTH)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
    mask[:, :5] = seed % 2  # a long run too: a count of several 5-bit groups
    text = coco_mask.encode(np.asfortranarray(mask))["counts"].decode("ascii")
    assert compressed_counts(text) == run_lengths(mask)


@pytest.mark.parametrize("text", ["not an RLE", "5:QU", "5\x7f"])
def test_malformed_compressed_counts_are_none_or_do_not_sum(text):
    counts = compressed_counts(text)
    assert counts is None or any(c < 0 for c in counts) or sum(counts) != HEIGHT * WIDTH


def test_usable_segmentations_give_the_mask_pycocotools_decodes():
    square = [[5, 5, 25, 5, 25, 20, 5, 20]]
    expected = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(square, HEIGHT, WIDTH)))
    encoded = coco_mask.encode(np.asfortranarray(expected))
    for segmentation in (square, square + [[1, 1, 2, 2]],  # the two-point piece adds nothing
                         {"size": [HEIGHT, WIDTH], "counts": encoded["counts"].decode("ascii")},
                         {"size": [HEIGHT, WIDTH], "counts": run_lengths(expected)}):
        rle, problem = mask_rle(segmentation, HEIGHT, WIDTH)
        assert problem is None and np.array_equal(decode_rle(rle), expected)


@pytest.mark.parametrize("segmentation, problem", [
    (None, NO_SEGMENTATION), ([], NO_SEGMENTATION), ({}, NO_SEGMENTATION),
    ([[5, 5, 25, 5]], NO_PIXELS), ([[5, 5, 10, 10, 15, 15]], NO_PIXELS), ([[50, 50, 60, 50, 60, 60]], NO_PIXELS),
    ([[5, 5, 25, 5, 25]], MALFORMED_POLYGONS), ([[5, 5, 25, 5, 25, float("nan")]], MALFORMED_POLYGONS),
    ([[5, 5, 25, 5, True, 20]], MALFORMED_POLYGONS),
    ({"size": [HEIGHT, WIDTH + 1], "counts": [HEIGHT * (WIDTH + 1)]}, RLE_SIZE_MISMATCH),
    ({"size": [HEIGHT, WIDTH], "counts": [10, 5]}, MALFORMED_RLE),
    ({"size": [HEIGHT, WIDTH], "counts": [-5, 10, HEIGHT * WIDTH - 5]}, MALFORMED_RLE),
    ({"size": [HEIGHT, WIDTH], "counts": [HEIGHT * WIDTH]}, NO_PIXELS),
])
def test_unusable_segmentations_say_why(segmentation, problem):
    assert mask_rle(segmentation, HEIGHT, WIDTH) == (None, problem)


def test_count_masks_judges_each_annotation_on_its_image():
    document = {"images": [{"id": 1, "height": HEIGHT, "width": WIDTH}, {"id": 2}],
                "annotations": [{"image_id": 1, "segmentation": [[5, 5, 25, 5, 25, 20, 5, 20]]},
                                {"image_id": 1, "segmentation": [[50, 50, 60, 50, 60, 60]]},  # off the image
                                {"image_id": 1}, {"image_id": 2, "segmentation": [[1, 1, 5, 1, 5, 5]]}]}
    assert count_masks(document) == {None: 1, NO_PIXELS: 1, NO_SEGMENTATION: 1, NO_IMAGE_SIZE: 1}


def test_box_rle_covers_the_box():
    assert decode_rle(box_rle([4, 3, 10, 5], HEIGHT, WIDTH))[3:8, 4:14].all()
    assert decode_rle(box_rle([4, 3, 10, 5], HEIGHT, WIDTH)).sum() == 50
