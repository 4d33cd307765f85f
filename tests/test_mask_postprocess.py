"""Mask post-processing (rfdetr.models.mask_postprocess): crop, original size, order, top-k only."""

from __future__ import annotations

import pytest
import torch
from fake_masks import FakeContext, FakeMaskModel, Render, fractions_of

from rfdetr.models.mask_postprocess import PostProcessMasks, paste_masks
from rfdetr.models.postprocess import PostProcess, select_top
from rfdetr.util.nested_tensor import nested_tensor_from_images

SIZES = [(64, 64), (32, 48)]  # transformed sizes; the batch canvas is 64 x 64, its mask grid 16 x 16
ORIGINAL_SIZES = torch.tensor([[100, 100], [60, 90]])


def left_half(image: int, query: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Positive exactly on the left half of the image's valid region; negative on the padding."""
    return torch.where((u < 0.5) & (v < 1), 10.0, -10.0)


def query_band(num_queries: int) -> Render:
    """Positive on the vertical band ``[q, q + 1) / num_queries`` of the image: the mask names its query."""
    def render(image: int, query: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        inside = (u >= query / num_queries) & (u < (query + 1) / num_queries) & (v < 1)
        return torch.where(inside, 10.0, -10.0)
    return render


def detector_outputs(num_queries: int, rows: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    samples = nested_tensor_from_images([torch.zeros(3, h, w) for h, w in SIZES])
    return {"pred_logits": torch.randn(len(SIZES), num_queries, rows, generator=generator),
            "pred_boxes": torch.rand(len(SIZES), num_queries, 4, generator=generator) * 0.5 + 0.25,
            "mask_context": FakeContext(samples.mask)}


def test_masks_are_cropped_to_the_valid_region_and_resized_to_the_original_size():
    model = FakeMaskModel(fractions_of(SIZES), left_half)
    results = PostProcessMasks(num_select=20, max_masks=4)(detector_outputs(10, 3), ORIGINAL_SIZES, model=model)
    for result, (height, width) in zip(results, ORIGINAL_SIZES.tolist()):
        masks = result["masks"]
        assert masks.dtype == torch.bool and masks.shape == (4, height, width)
        assert masks[:, :, : width // 2].all() and not masks[:, :, width // 2:].any()


def test_masks_follow_the_detections_order_and_boxes_match_postprocess():
    num_queries, rows = 12, 3
    outputs = detector_outputs(num_queries, rows)
    model = FakeMaskModel(fractions_of(SIZES), query_band(num_queries))
    results = PostProcessMasks(num_select=30, max_masks=25)(outputs, ORIGINAL_SIZES, model=model)
    reference = PostProcess(30)(outputs, ORIGINAL_SIZES)
    for image, (result, expected) in enumerate(zip(results, reference)):
        for key in ("scores", "labels", "boxes"):
            assert torch.equal(result[key], expected[key][:25])
        flat = outputs["pred_logits"][image].sigmoid().flatten()
        queries = [int(i) // rows for i in sorted(range(len(flat)), key=lambda i: -flat[i])[:25]]
        width = int(ORIGINAL_SIZES[image, 1])
        columns = torch.arange(width, dtype=torch.float32)
        for mask, query in zip(result["masks"], queries):
            centre = columns[mask[0]].mean().item()
            assert int(centre / width * num_queries) == query


def test_only_the_top_max_masks_are_predicted_once_per_query():
    num_queries, rows = 30, 3
    outputs = detector_outputs(num_queries, rows, seed=1)
    outputs["pred_logits"][:, 7, :2] = 10.0  # query 7 is the top detection under two classes
    model = FakeMaskModel(fractions_of(SIZES), query_band(num_queries))
    results = PostProcessMasks(num_select=50, max_masks=5)(outputs, ORIGINAL_SIZES, model=model)
    assert len(model.requests) == 1
    requested = model.requests[0]
    expected_queries = select_top(outputs["pred_logits"], 50)[1][:, :5]
    for image, result in enumerate(results):
        asked = [q for b, q in requested if b == image]
        assert sorted(asked) == sorted(set(expected_queries[image].tolist())) and len(asked) == 4
        assert len(result["scores"]) == len(result["masks"]) == 5
        assert torch.equal(result["masks"][0], result["masks"][1])


def test_score_threshold_and_class_rows_keep_boxes_and_masks_aligned():
    outputs = detector_outputs(10, 4, seed=2)
    model = FakeMaskModel(fractions_of(SIZES), query_band(10))
    results = PostProcessMasks(num_select=20, max_masks=None)(outputs, ORIGINAL_SIZES, model=model,
                                                              class_rows=[0, 2],
                                                              score_threshold=0.5)
    reference = PostProcess(20)(outputs, ORIGINAL_SIZES, class_rows=[0, 2])
    for result, expected in zip(results, reference):
        keep = int((expected["scores"] > 0.5).sum())
        assert 0 < keep < 20
        assert torch.equal(result["labels"], expected["labels"][:keep])
        assert len(result["masks"]) == keep and set(result["labels"].tolist()) <= {0, 2}
    assert len(model.requests[0]) <= sum(len(r["masks"]) for r in results)


def test_paste_handles_a_fractional_valid_region_and_empty_input():
    logits = torch.full((1, 4, 4), -5.0)
    logits[0, :, :2] = 5.0  # two of the 2.5 valid columns are positive
    masks = paste_masks(logits, torch.tensor([0.625, 0.625]), (10, 10))
    assert masks[0, :, :8].all() and not masks[0, :, 8:].any()  # the sign change at column 2 of 2.5 cells
    assert paste_masks(torch.zeros(0, 4, 4), torch.tensor([1.0, 1.0]), (5, 7)).shape == (0, 5, 7)


def test_real_detrsegm_masks_for_the_top_detections_only():
    from rfdetr.config import model_config
    from rfdetr.models import build_detector
    from rfdetr.models.segmentation import DETRsegm

    torch.manual_seed(0)
    model = DETRsegm(build_detector(model_config("nano", num_queries=20)), mask_head="light").eval()
    counts = []
    predict = model.predict_masks
    model.predict_masks = lambda context, b, q: counts.append(len(b)) or predict(context, b, q)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 96, 128, generator=generator), torch.randn(3, 128, 64, generator=generator)]
    original_sizes = torch.tensor([[300, 400], [200, 100]])
    with torch.no_grad():
        outputs = model(images)
    results = PostProcessMasks(num_select=100, max_masks=10)(outputs, original_sizes, model=model)
    reference = PostProcess(100)(outputs, original_sizes)
    assert counts and sum(counts) <= 20
    for result, expected, (height, width) in zip(results, reference, original_sizes.tolist()):
        assert result["masks"].shape == (10, height, width) and result["masks"].dtype == torch.bool
        assert torch.equal(result["boxes"], expected["boxes"][:10])


@pytest.mark.parametrize("max_masks", [-1])
def test_invalid_max_masks(max_masks):
    with pytest.raises(ValueError):
        PostProcessMasks(num_select=10, max_masks=max_masks)
