"""Windowed DINOv2 layout, attention scope, projector levels and the sine position encoding."""

from __future__ import annotations

import pytest
import torch
from conftest import golden

from rfdetr.config import EncoderSpec, model_config
from rfdetr.models.backbone import build_backbone
from rfdetr.models.backbone.dinov2 import DinoV2Backbone, Embeddings
from rfdetr.util.nested_tensor import nested_tensor_from_images, resize_mask

TINY = EncoderSpec(width=8, num_heads=2, depth=4)


def test_windows_hold_contiguous_patch_blocks_on_non_square_input():
    torch.manual_seed(0)
    windowed = Embeddings(width=8, patch_size=4, position_grid=6, num_windows=2)
    plain = Embeddings(width=8, patch_size=4, position_grid=6, num_windows=1)
    plain.load_state_dict(windowed.state_dict())
    images = torch.randn(2, 3, 16, 32)  # 4 x 8 patches, 2 x 4 patches per window
    tokens = windowed(images)
    reference = plain(images)
    assert tokens.shape == (2 * 4, 1 + 8, 8)
    grid = reference[:, 1:].reshape(2, 4, 8, 8)
    for b in range(2):
        for row in range(2):
            for col in range(2):
                window = tokens[b * 4 + row * 2 + col]
                torch.testing.assert_close(window[0], reference[b, 0])  # its own CLS copy
                block = grid[b, row * 2:(row + 1) * 2, col * 4:(col + 1) * 4].reshape(8, 8)
                torch.testing.assert_close(window[1:], block)


def test_windowed_layers_attend_within_a_window_and_tapped_layers_globally():
    torch.manual_seed(0)
    encoder = DinoV2Backbone(TINY, patch_size=4, position_grid=4, num_windows=2, out_feature_indexes=[1, 2])
    images = torch.randn(1, 3, 16, 16)
    changed = images.clone()
    changed[:, :, :8, :8] += 1.0  # only the top-left window
    with torch.no_grad():
        stage1, stage2 = encoder(images)
        changed1, changed2 = encoder(changed)
    # Stage 1 = after layer 0 (windowed): the other windows are untouched.
    assert not torch.allclose(changed1[..., :2, :2], stage1[..., :2, :2])
    torch.testing.assert_close(changed1[..., 2:, :], stage1[..., 2:, :], atol=0, rtol=0)
    torch.testing.assert_close(changed1[..., :2, 2:], stage1[..., :2, 2:], atol=0, rtol=0)
    # Layer 1 is global (1 is a tap number): the change reaches every window.
    assert not torch.allclose(changed2[..., 2:, 2:], stage2[..., 2:, 2:])


def test_input_not_multiple_of_window_block_is_refused():
    encoder = DinoV2Backbone(TINY, patch_size=4, position_grid=4, num_windows=2, out_feature_indexes=[1])
    with pytest.raises(ValueError, match="multiple of patch_size x num_windows = 8"):
        encoder(torch.zeros(1, 3, 16, 20))


def test_position_table_is_interpolated_for_other_grids():
    embeddings = Embeddings(width=8, patch_size=4, position_grid=4, num_windows=1)
    torch.nn.init.normal_(embeddings.position_embeddings)
    assert embeddings.position_table(4, 4) is embeddings.position_embeddings
    table = embeddings.position_table(6, 8)
    assert table.shape == (1, 1 + 48, 8)
    torch.testing.assert_close(table[:, 0], embeddings.position_embeddings[:, 0])


def test_large_projector_levels_are_p3_and_p5():
    config = model_config("large")
    backbone = build_backbone(config)
    features = [torch.zeros(1, 768, 4, 4) for _ in range(4)]
    with torch.no_grad():
        levels = backbone[0].projector(features)
    assert [tuple(level.shape) for level in levels] == [(1, 384, 8, 8), (1, 384, 2, 2)]


def test_p6_level_is_a_parameter_free_subsampling():
    config = model_config("nano", projector_scale=["P4", "P6"])
    backbone = build_backbone(config)
    assert len(backbone[0].projector.stages) == 1
    with torch.no_grad():
        levels = backbone[0].projector([torch.randn(1, 384, 4, 4) for _ in range(4)])
    assert [tuple(level.shape[-2:]) for level in levels] == [(4, 4), (2, 2)]
    torch.testing.assert_close(levels[1], levels[0][..., ::2, ::2])


@pytest.mark.parametrize("case", ["a", "b"])
def test_level_padding_masks_match_upstream(case):
    g = golden("nano")
    images = g["input_a"] if case == "a" else g["input_b"]
    mask = nested_tensor_from_images(images).mask
    level_mask = g[f"debug_{case}"]["masks"][0]
    assert torch.equal(resize_mask(mask, level_mask.shape[-2:]), level_mask)
