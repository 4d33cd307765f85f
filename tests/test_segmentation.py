"""DETRsegm wrapper and mask heads (rfdetr.models.segmentation, rfdetr.models.mask_heads).

Padding, what holds: masks depend only on an image and its padded canvas, not on the other images
of the batch (same image, same canvas, alone or beside another -> logits equal to ~1e-6). What
does not hold: an image alone vs the same image padded to a larger canvas. The detector's ViT
attends over padded tokens (the upstream behaviour, kept for checkpoint parity), so memory,
queries and even the boxes change (nano, filled weights: box coordinates move by up to ~0.8),
and a query index no longer denotes the same object; the mask logits can only be compared
per batch composition, as tested here.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rfdetr.config import SIZES, model_config
from rfdetr.models import build_detector
from rfdetr.models.mask_heads import MaskHeadNano, MaskHeadSmallConv, MHAttentionMap, box_coverage
from rfdetr.models.segmentation import DETRsegm, MaskContext
from rfdetr.util.nested_tensor import NestedTensor, nested_tensor_from_images
from rfdetr.util.weight_fill import fill_model_

NUM_QUERIES = 50
SEGMENTATION_PREFIXES = ("bbox_attention.", "image_stem.", "mask_head.")


@functools.lru_cache(maxsize=1)
def _filled_nano():
    return fill_model_(build_detector(model_config("nano", num_queries=NUM_QUERIES)), seed=0).eval()


def filled_nano():
    """A fresh copy of a filled nano detector (50 queries); wrappers may freeze it."""
    return copy.deepcopy(_filled_nano())


def images(batch: int = 2, side: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def indices(*pairs: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    batch_index, query_index = zip(*pairs)
    return torch.tensor(batch_index), torch.tensor(query_index)


def test_mask_logits_at_stride_4_for_nano_native_resolution():
    model = DETRsegm(filled_nano(), mask_head="detr").eval()
    with torch.no_grad():
        out = model(images(batch=1, side=384))
        context = out["mask_context"]
        assert isinstance(context, MaskContext)
        assert context.memory.shape == (1, 256, 24, 24) and context.memory_mask.shape == (1, 24, 24)
        assert context.query_features.shape == (1, NUM_QUERIES, 256)
        assert context.image_size == (384, 384) and context.mask_size == (96, 96)
        masks = model.predict_masks(context, *indices((0, 0), (0, 7), (0, 49)))
    assert masks.shape == (3, 96, 96) and masks.dtype == torch.float32
    assert torch.isfinite(masks).all()


def test_padded_batch_masks_cover_the_padded_canvas():
    model = DETRsegm(filled_nano(), mask_head="light").eval()
    batch = [torch.randn(3, 96, 128), torch.randn(3, 128, 64)]
    with torch.no_grad():
        out = model(batch)
        masks = model.predict_masks(out["mask_context"], *indices((0, 1), (1, 2), (1, 3)))
    assert masks.shape == (3, 32, 32)
    assert out["mask_context"].image_mask.shape == (2, 128, 128)


@pytest.mark.parametrize("size", SIZES)
def test_every_size_builds_both_heads_and_predicts_masks(size):
    config = model_config(size, num_queries=10)
    detector = build_detector(config).eval()
    side = 2 * config.block_size
    for head in ("detr", "light"):
        model = DETRsegm(detector, freeze_detr=True, mask_head=head)
        model.mask_chunk = 2  # 3 queries -> two chunks
        with torch.no_grad():
            out = model(images(batch=2, side=side))
            masks = model.predict_masks(out["mask_context"], *indices((0, 0), (1, 9), (1, 4)))
        assert masks.shape == (3, side // 4, side // 4)
        assert torch.isfinite(masks).all()
    assert model.config is config and model.num_queries == 10


def test_frozen_detector_outputs_identical_no_grad_and_stays_in_eval():
    # Bit-identity needs the same requires_grad flags: with trainable weights, ATen's matmul folds
    # the self-attention in-projection into one mm instead of a bmm (~3e-7 apart, even under no_grad).
    plain, trainable = filled_nano().requires_grad_(False), filled_nano()
    model = DETRsegm(filled_nano(), freeze_detr=True).train()
    assert not model.detr.training and all(not m.training for m in model.detr.modules())
    assert model.mask_head.training and model.bbox_attention.training
    assert not any(p.requires_grad for p in model.detr.parameters())
    x = images()
    with torch.no_grad():
        expected = plain(x)
    out = model(x)
    assert out["pred_logits"].shape[1] == NUM_QUERIES  # group 0 only: the detector is in eval
    for key in ("pred_logits", "pred_boxes"):
        assert torch.equal(out[key], expected[key])
        assert not out[key].requires_grad
    for got, want in zip(out["aux_outputs"], expected["aux_outputs"]):
        assert torch.equal(got["pred_boxes"], want["pred_boxes"])
    assert torch.equal(out["enc_outputs"]["pred_logits"], expected["enc_outputs"]["pred_logits"])
    with torch.no_grad():
        torch.testing.assert_close(out["pred_boxes"], trainable(x)["pred_boxes"], atol=1e-5, rtol=0)
    model.eval().train()
    assert not model.detr.training


def test_unfrozen_detector_trains_with_all_groups_and_gets_gradients():
    detector = filled_nano()
    plain = copy.deepcopy(detector).train()
    model = DETRsegm(detector, freeze_detr=False, mask_head="light").train()
    assert model.detr.training
    assert [p.requires_grad for p in model.detr.parameters()] == [p.requires_grad for p in plain.parameters()]
    x = images(batch=1)
    out = model(x)
    expected = plain(x)
    queries = NUM_QUERIES * detector.group_detr
    assert out["pred_logits"].shape[1] == queries
    assert out["mask_context"].query_features.shape[1] == queries
    for key in ("pred_logits", "pred_boxes"):
        assert torch.equal(out[key], expected[key])
        assert torch.equal(out["enc_outputs"][key], expected["enc_outputs"][key])
        assert all(torch.equal(a[key], b[key]) for a, b in zip(out["aux_outputs"], expected["aux_outputs"]))
    # A mask loss alone reaches the ViT, the projector and the decoder (query 5 of group 7).
    masks = model.predict_masks(out["mask_context"], *indices((0, 5 + 7 * NUM_QUERIES)))
    masks.sigmoid().mean().backward()
    for name in ("backbone.0.encoder", "backbone.0.projector", "transformer.decoder"):
        grads = [p.grad for n, p in model.detr.named_parameters() if n.startswith(name)]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_state_dict_prefixes_and_strict_loading_of_a_detector_checkpoint():
    detector_state = filled_nano().state_dict()
    model = DETRsegm(build_detector(model_config("nano", num_queries=NUM_QUERIES)), mask_head="light")
    state = model.state_dict()
    detector_keys = {key for key in state if key.startswith("detr.")}
    assert detector_keys == {"detr." + key for key in detector_state}
    head_keys = set(state) - detector_keys
    assert head_keys and all(key.startswith(SEGMENTATION_PREFIXES) for key in head_keys)
    assert {"bbox_attention.q_linear.weight", "bbox_attention.k_linear.weight", "mask_head.lay1.weight",
            "mask_head.adapter1.weight", "mask_head.out_lay.weight"} <= head_keys
    stage1 = {"detr." + key: value for key, value in detector_state.items()}
    model.load_state_dict({**stage1, **{key: state[key] for key in head_keys}}, strict=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded["detr." + key], value) for key, value in detector_state.items())


def _head_flops(head: torch.nn.Module, memory, attention, fine) -> int:
    with FlopCounterMode(display=False) as counter:
        count = attention.shape[0]
        boxes = torch.tensor([0.5, 0.5, 0.3, 0.4]).expand(count, 4)
        head(attention, head.prepare(memory, fine), torch.zeros(count, dtype=torch.long), boxes, torch.ones(count, 2))
    return counter.get_total_flops()


def test_nano_head_has_at_most_half_the_parameters_and_flops():
    """Nano geometry at 384 px: memory 24x24, 16 heads, stem maps 64 @ 48x48 and 32 @ 96x96."""
    hidden_dim, heads, fine_channels = 256, 16, (64, 32)
    small = MaskHeadSmallConv(hidden_dim, heads, fine_channels)
    nano = MaskHeadNano(hidden_dim, heads, fine_channels)
    params = [sum(p.numel() for p in head.parameters()) for head in (small, nano)]
    memory, attention = torch.randn(1, hidden_dim, 24, 24), torch.randn(4, heads, 24, 24).softmax(1)
    fine = (torch.randn(1, 64, 48, 48), torch.randn(1, 32, 96, 96))
    with torch.no_grad():
        flops = [_head_flops(head, memory, attention, fine) for head in (small, nano)]
    assert params[1] <= 0.5 * params[0], params
    assert flops[1] <= 0.5 * flops[0], flops


@pytest.mark.parametrize("head", ["detr", "light"])
def test_gradient_reaches_every_mask_parameter_and_not_the_frozen_detector(head):
    model = DETRsegm(filled_nano(), freeze_detr=True, mask_head=head).train()
    out = model(images())
    masks = model.predict_masks(out["mask_context"], *indices((0, 3), (1, 0), (1, 8)))
    torch.nn.functional.binary_cross_entropy_with_logits(masks, (masks.detach() > 0).float()).backward()
    for name, parameter in model.named_parameters():
        if name.startswith("detr."):
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_masks_do_not_depend_on_the_other_images_of_the_batch():
    model = DETRsegm(filled_nano(), mask_head="detr").eval()
    batch = nested_tensor_from_images([torch.randn(3, 64, 96), torch.randn(3, 128, 128)])
    first = NestedTensor(batch.tensors[:1], batch.mask[:1])  # same image on the same padded canvas
    pairs = indices((0, 0), (0, 4), (0, 11))
    with torch.no_grad():
        together, alone = model(batch), model(first)
        masks_together = model.predict_masks(together["mask_context"], *pairs)
        masks_alone = model.predict_masks(alone["mask_context"], *pairs)
    torch.testing.assert_close(alone["pred_boxes"][0], together["pred_boxes"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(masks_alone, masks_together, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["detr", "light"])
def test_the_query_steers_the_mask_from_the_start(head):
    """Different queries of one image get clearly different masks from a freshly built head.

    Regression: the raw attention maps (softmax over heads x positions, ~1e-4 each) were ~5000x
    smaller than the memory term of the first conv, so every query got the same mask and training
    converged to one foreground mask per image.
    """
    torch.manual_seed(0)
    model = DETRsegm(filled_nano(), mask_head=head).eval()
    with torch.no_grad():
        context = model(images(batch=1, side=256))["mask_context"]
        logits = model.predict_masks(context, *indices(*((0, q) for q in range(8))))
    spread_between_queries = (logits - logits.mean(0)).abs().mean()
    spread_within_a_mask = (logits - logits.mean((1, 2), keepdim=True)).abs().mean()
    assert spread_between_queries > 0.03 * spread_within_a_mask, (spread_between_queries, spread_within_a_mask)


def test_box_coverage_is_the_covered_share_of_each_cell_on_the_padded_canvas():
    # Left half of a full-canvas image on a 2 x 4 grid: columns 0-1 fully covered.
    full = box_coverage(torch.tensor([[0.25, 0.5, 0.5, 1.0]]), torch.ones(1, 2), (2, 4))
    torch.testing.assert_close(full[0, 0], torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2))
    # A box smaller than a cell still shows, with its area share: 0.1 x 0.1 of a 0.25 x 0.5 cell.
    small = box_coverage(torch.tensor([[0.6, 0.2, 0.1, 0.1]]), torch.ones(1, 2), (2, 4))
    assert small.sum().item() == pytest.approx(0.01 / (0.25 * 0.5))
    assert small[0, 0, 0, 2] > 0 and small[0, 0, 1].sum() == 0
    # The image fills the top-left half of the canvas in width: a whole-image box covers that half.
    padded = box_coverage(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), torch.tensor([[1.0, 0.5]]), (2, 4))
    torch.testing.assert_close(padded[0, 0], torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2))


def test_attention_maps_softmax_over_heads_and_positions_and_ignore_padding():
    attention = MHAttentionMap(32, 32, num_heads=4)
    memory = torch.randn(2, 32, 6, 5)
    padding = torch.zeros(2, 6, 5, dtype=torch.bool)
    padding[1, 4:, :] = True
    padding[1, :, 3:] = True
    maps = attention(torch.randn(3, 32), memory, padding, batch_index=torch.tensor([0, 1, 1]))
    assert maps.shape == (3, 4, 6, 5)
    torch.testing.assert_close(maps.sum((1, 2, 3)), torch.ones(3))
    assert (maps[1:][padding[1].expand(2, 4, 6, 5)] == 0).all()
    assert (maps[1:, :, :4, :3] > 0).all()


def test_a_deepcopy_predicts_with_its_own_head_and_the_context_holds_tensors_only():
    model = DETRsegm(filled_nano(), mask_head="light").eval()
    twin = copy.deepcopy(model)  # what EMA does
    x = images(batch=1)
    pairs = indices((0, 2))
    with torch.no_grad():
        out, twin_out = model(x), twin(x)
        torch.testing.assert_close(twin.predict_masks(twin_out["mask_context"], *pairs),
                                   model.predict_masks(out["mask_context"], *pairs), atol=0, rtol=0)
        for parameter in twin.mask_head.parameters():
            parameter.add_(0.05)
        theirs = model.predict_masks(out["mask_context"], *pairs)
        assert not twin.predict_masks(out["mask_context"], *pairs).equal(theirs)
    fields = [getattr(out["mask_context"], f.name) for f in dataclasses.fields(MaskContext)]
    flat = [v for field in fields for v in (field if isinstance(field, tuple) else (field,))]
    assert not any(isinstance(value, torch.nn.Module) for value in flat)
    assert all(torch.is_tensor(v) or isinstance(v, int) or v is None or isinstance(v, torch.dtype) for v in flat)


def test_chunking_empty_requests_and_invalid_arguments():
    model = DETRsegm(filled_nano(), mask_head="light").eval()
    with torch.no_grad():
        context = model(images())["mask_context"]
        pairs = indices(*[(i % 2, i) for i in range(7)])
        whole = model.predict_masks(context, *pairs)
        model.mask_chunk = 3
        torch.testing.assert_close(model.predict_masks(context, *pairs), whole, atol=1e-5, rtol=0)
        empty = torch.zeros(0, dtype=torch.long)
        assert model.predict_masks(context, empty, empty).shape == (0, 32, 32)
    with pytest.raises(ValueError, match="equal length"):
        model.predict_masks(context, torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="mask_head"):
        DETRsegm(filled_nano(), mask_head="tiny")
