"""Deformable attention sampling against a naive per-point bilinear implementation."""

from __future__ import annotations

import torch

from rfdetr.models.ms_deform_attn import MSDeformAttn, sample_and_weight


def _bilinear(value: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """value [C, H, W]; x, y in [0, 1] of the map (align_corners=False, zeros outside)."""
    _, height, width = value.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    total = torch.zeros(value.shape[0], dtype=torch.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
            if 0 <= xi < width and 0 <= yi < height:
                total += weight * value[:, yi, xi].double()
    return total


def test_sampling_matches_naive_bilinear_sum():
    torch.manual_seed(0)
    shapes = [(4, 6), (2, 3)]
    batch, heads, head_dim, queries, points = 2, 2, 3, 5, 2
    length = sum(h * w for h, w in shapes)
    value = torch.randn(batch, heads, head_dim, length)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2) * 1.2 - 0.1
    weights = torch.softmax(torch.randn(batch, queries, heads, len(shapes) * points), -1)
    out = sample_and_weight(value, shapes, locations, weights)
    assert out.shape == (batch, queries, heads * head_dim)
    starts = [0, shapes[0][0] * shapes[0][1]]
    for b in range(batch):
        for q in range(queries):
            for h in range(heads):
                expected = torch.zeros(head_dim, dtype=torch.float64)
                for level, (height, width) in enumerate(shapes):
                    level_value = value[b, h, :, starts[level]:starts[level] + height * width].view(head_dim, height,
                                                                                                     width)
                    for p in range(points):
                        x, y = locations[b, q, h, level, p].tolist()
                        expected += weights[b, q, h, level * points + p].double() * _bilinear(level_value, x, y)
                torch.testing.assert_close(out[b, q, h * head_dim:(h + 1) * head_dim].double(), expected,
                                           atol=1e-5, rtol=0)


def test_padded_memory_is_ignored():
    torch.manual_seed(0)
    attention = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=2)
    query = torch.randn(1, 3, 8)
    boxes = torch.rand(1, 3, 1, 4) * 0.5 + 0.25
    memory = torch.randn(1, 16, 8)
    padding = torch.zeros(1, 16, dtype=torch.bool)
    padding[0, 8:] = True
    changed = memory.clone()
    changed[0, 8:] += 100.0
    first = attention(query, boxes, memory, [(4, 4)], padding)
    second = attention(query, boxes, changed, [(4, 4)], padding)
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_initial_offsets_point_in_per_head_directions():
    attention = MSDeformAttn(d_model=8, n_levels=2, n_heads=4, n_points=3)
    offsets = attention.sampling_offsets.bias.view(4, 2, 3, 2)
    torch.testing.assert_close(offsets[0, :, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(offsets[1, 1, 2], torch.tensor([0.0, 3.0]), atol=1e-6, rtol=0)
    assert torch.count_nonzero(attention.sampling_offsets.weight) == 0
