"""PostProcess reproduces upstream's post-processed detections exactly from the golden raw outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import golden

from rfdetr.config import SIZES
from rfdetr.models import PostProcess
from rfdetr.util.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", ["a", "b"])
def test_postprocess_on_golden_outputs_is_exact(size, case):
    g = golden(size)
    raw = g[f"out_{case}"]
    target_sizes = torch.tensor(g["meta"][f"target_sizes_{case}"])
    results = PostProcess(num_select=300)({"pred_logits": raw["pred_logits"], "pred_boxes": raw["pred_boxes"]},
                                          target_sizes)
    expected = g[f"post_{case}"]
    assert len(results) == len(expected)
    for ours, theirs in zip(results, expected):
        for key in ("scores", "labels", "boxes"):
            assert torch.equal(ours[key], theirs[key]), key


def test_postprocess_picks_best_query_class_pairs_in_pixels():
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 2, 1] = 5.0  # query 2, class 1: best
    logits[0, 0, 0] = 1.0  # query 0, class 0: second
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.75, 0.5, 0.5]]])
    result = PostProcess(num_select=2)({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))[0]
    assert result["labels"].tolist() == [1, 0]
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([5.0, 1.0])))
    torch.testing.assert_close(result["boxes"], torch.tensor([[0.0, 50.0, 100.0, 100.0], [80.0, 30.0, 120.0, 70.0]]))


def test_postprocess_rejects_mismatched_target_sizes():
    outputs = {"pred_logits": torch.zeros(2, 3, 4), "pred_boxes": torch.zeros(2, 3, 4)}
    with pytest.raises(ValueError, match="target sizes"):
        PostProcess(num_select=3)(outputs, torch.tensor([[10, 10]]))


def test_box_conversions_round_trip_and_clamp_negative_sizes():
    boxes = torch.tensor([[0.5, 0.4, 0.2, 0.1], [0.3, 0.3, 0.0, 0.6]])
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes)
    degenerate = box_cxcywh_to_xyxy(torch.tensor([0.5, 0.5, -0.2, 0.2]))
    torch.testing.assert_close(degenerate, torch.tensor([0.5, 0.4, 0.5, 0.6]))
