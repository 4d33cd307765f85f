"""Mask losses (rfdetr.models.mask_losses): values, matched-only prediction, padding / resize alignment.

A fake model draws mask logits from a function of each image's normalised coordinates onto the
canvas grid (stride 4 of the padded batch), so a correct alignment sees the same values wherever
an image sits and however the batch was resized.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from fake_masks import FakeContext, FakeMaskModel, Render, fractions_of

from rfdetr.config import TrainConfig, model_config
from rfdetr.datasets.collate import resize_batch
from rfdetr.models.criterion import build_criterion
from rfdetr.models.mask_geometry import canvas_grid, valid_fractions
from rfdetr.models.mask_losses import MaskLoss, add_mask_losses
from rfdetr.util.nested_tensor import NestedTensor, nested_tensor_from_images


def rect_render(rects: dict[tuple[int, int], tuple[float, float, float, float]], logit: float = 20.0) -> Render:
    """+logit inside the rectangle (x0, y0, x1, y1, normalised) of a pair, -logit elsewhere (also off-image)."""
    def render(image: int, query: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x0, y0, x1, y1 = rects.get((image, query), (0.0, 0.0, 0.0, 0.0))
        inside = (u >= x0) & (u < x1) & (v >= y0) & (v < y1)
        return torch.where(inside, logit, -logit)
    return render


def rect_mask(rect: tuple[float, float, float, float], height: int, width: int) -> torch.Tensor:
    x0, y0, x1, y1 = rect
    mask = torch.zeros(height, width, dtype=torch.uint8)
    mask[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = 1
    return mask


def target(size: tuple[int, int], rects: list[tuple[float, float, float, float]]) -> dict:
    height, width = size
    masks = torch.stack([rect_mask(r, height, width) for r in rects]) if rects else torch.zeros(0, height, width,
                                                                                              dtype=torch.uint8)
    boxes = torch.tensor([[(r[0] + r[2]) / 2, (r[1] + r[3]) / 2, r[2] - r[0], r[3] - r[1]] for r in rects]).view(-1, 4)
    return {"masks": masks, "boxes": boxes, "labels": torch.ones(len(rects), dtype=torch.long),
            "size": torch.tensor(size), "orig_size": torch.tensor(size)}


def batch_context(sizes: list[tuple[int, int]], resize_to: int | None = None) -> FakeContext:
    """The padded (optionally multi-scale resized) batch's mask context: its padding mask."""
    samples = nested_tensor_from_images([torch.zeros(3, h, w) for h, w in sizes])
    if resize_to is not None:
        samples = resize_batch(samples, resize_to)
    return FakeContext(samples.mask)


def match(*per_image: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Image i's queries ``per_image[i]`` matched to its targets 0, 1, ... in order."""
    return [(torch.tensor(q, dtype=torch.long), torch.arange(len(q))) for q in per_image]


# Bands (no corners inside the image: bilinear sampling rounds a coarse grid's corners off) on cell
# edges of every grid used here, so "perfect" logits exist on each grid.
RECT_A = (0.0, 0.25, 1.0, 0.75)
RECT_B = (0.0, 0.0, 0.5, 1.0)


def two_image_case(render_rects: dict, sizes=((64, 64), (32, 48)), resize_to: int | None = None,
                   logit: float = 20.0):
    sizes = list(sizes)
    model = FakeMaskModel(fractions_of(sizes), rect_render(render_rects, logit))
    targets = [target(sizes[0], [RECT_A]), target(sizes[1], [RECT_B])]
    outputs = {"mask_context": batch_context(sizes, resize_to)}
    return model, outputs, targets, match([2], [5])


def test_perfect_logits_give_near_zero_losses_and_wrong_ones_large():
    torch.manual_seed(0)
    # Points near an edge see logits interpolated between +-logit (and most points are drawn there):
    # their loss shrinks as 1 / logit.
    model, outputs, targets, indices = two_image_case({(0, 2): RECT_A, (1, 5): RECT_B}, logit=500.0)
    perfect = MaskLoss()(outputs, targets, indices, num_boxes=2, model=model)
    tolerance = 1e-4
    assert perfect["loss_mask"] < tolerance and perfect["loss_dice"] < tolerance

    wrong_model, wrong_outputs, *_ = two_image_case({(0, 2): RECT_B, (1, 5): RECT_A})
    wrong = MaskLoss()(wrong_outputs, targets, indices, num_boxes=2, model=wrong_model)
    assert wrong["loss_mask"] > 2.0 and wrong["loss_dice"] > 0.3


def test_losses_are_per_mask_means_summed_over_num_boxes():
    # Every pixel wrong by a logit of 20: BCE 20 per pixel, whatever the mask size; 2 masks / num_boxes 4.
    model, outputs, targets, indices = two_image_case({(0, 2): RECT_B, (1, 5): RECT_A})
    model.render = lambda image, query, u, v: torch.where(rect_render({(0, 2): RECT_A, (1, 5): RECT_B})(
        image, query, u, v) > 0, -20.0, 20.0)
    losses = MaskLoss()(outputs, targets, indices, num_boxes=4, model=model)
    assert losses["loss_mask"].item() == pytest.approx(2 * 20 / 4, rel=1e-4)
    # Dice with p ~ 1 off target and ~ 0 on it: 1 - 1 / (cells + 1); 16 x 16 and 8 x 12 cells.
    assert losses["loss_dice"].item() == pytest.approx((2 - 1 / 257 - 1 / 97) / 4, rel=1e-5)


def test_only_matched_pairs_are_predicted_and_aux_sets_are_skipped():
    sizes = [(64, 64), (64, 64)]
    model = FakeMaskModel(fractions_of(sizes), rect_render({}))
    criterion = build_criterion(model_config("nano", num_classes=3, group_detr=1, dec_layers=3), TrainConfig())
    add_mask_losses(criterion, mask_loss_coef=2.0, dice_loss_coef=5.0)
    queries, rows = 20, 4
    generator = torch.Generator().manual_seed(0)

    def output_set() -> dict:
        return {"pred_logits": torch.randn(2, queries, rows, generator=generator),
                "pred_boxes": torch.rand(2, queries, 4, generator=generator) * 0.5 + 0.25}
    outputs = {**output_set(), "aux_outputs": [output_set(), output_set()], "enc_outputs": output_set(),
               "mask_context": batch_context(sizes)}
    targets = [target(sizes[0], [RECT_A, RECT_B]), target(sizes[1], [RECT_B])]
    losses, matches = criterion.losses_and_matches(outputs, targets, model)

    assert {"loss_mask", "loss_dice"} <= set(losses)
    assert not [key for key in losses if key.startswith(("loss_mask_", "loss_dice_"))]
    assert criterion.weight_dict["loss_mask"] == 2.0 and criterion.weight_dict["loss_dice"] == 5.0
    assert len(model.requests) == 1  # one call, for the last layer only
    src = matches[""]
    expected = [(image, q) for image, (queries_i, _) in enumerate(src) for q in queries_i.tolist()]
    assert model.requests[0] == expected and len(expected) == 3


def test_same_image_alone_or_padded_beside_a_larger_one_gives_the_same_loss():
    def render(image: int, query: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        inside = (u < 1) & (v < 1)  # padding gets a value the loss must never read
        return torch.where(inside, 3 * torch.sin(7 * u) + 2 * torch.cos(5 * v) - 1, torch.full_like(u, 50.0))
    image_size, large = (32, 48), (64, 64)
    image_target = target(image_size, [RECT_A, RECT_B])

    def loss(sizes: list[tuple[int, int]], targets: list[dict], indices) -> dict:
        torch.manual_seed(0)
        model = FakeMaskModel(fractions_of(sizes), render)
        return MaskLoss()({"mask_context": batch_context(sizes)}, targets, indices, num_boxes=2, model=model)

    alone = loss([image_size], [image_target], match([4, 1]))
    padded = loss([image_size, large], [image_target, target(large, [])], match([4, 1], []))
    assert alone["loss_mask"] > 0.1 and alone["loss_dice"] > 0.1
    for key in ("loss_mask", "loss_dice"):
        assert padded[key].item() == pytest.approx(alone[key].item(), abs=1e-5)


@pytest.mark.parametrize("resize_to", [32, 96, 128])
def test_multi_scale_resized_batch_still_aligns(resize_to):
    torch.manual_seed(0)
    model, outputs, targets, indices = two_image_case({(0, 2): RECT_A, (1, 5): RECT_B}, resize_to=resize_to,
                                                      logit=500.0)
    losses = MaskLoss()(outputs, targets, indices, num_boxes=2, model=model)
    tolerance = 1e-4
    assert losses["loss_mask"] < tolerance and losses["loss_dice"] < tolerance
    # Masks drawn as if the padded image filled the canvas (the fork's alignment) are far off:
    # the left half of the canvas is 2 / 3 of image 1 -> its dice ~ 1 - 1 / 1.17.
    naive = FakeMaskModel([(1.0, 1.0), (1.0, 1.0)], rect_render({(0, 2): RECT_A, (1, 5): RECT_B}))
    assert MaskLoss()(outputs, targets, indices, num_boxes=2, model=naive)["loss_dice"] > 0.05


def test_valid_fractions_from_the_mask_refined_by_target_sizes():
    sizes = [(64, 64), (30, 46)]
    resized = batch_context(sizes, resize_to=40).image_mask
    from_mask = valid_fractions(resized)
    assert from_mask[1].tolist() == pytest.approx([19 / 40, 29 / 40])  # ceil(30 * 40 / 64) rows
    exact = valid_fractions(resized, torch.tensor(sizes))
    assert exact[1].tolist() == pytest.approx([30 / 64, 46 / 64]) and exact[0].tolist() == [1.0, 1.0]
    # A canvas padded beyond the largest image (not collate's padding): the mask wins.
    canvas = torch.ones(2, 80, 80, dtype=torch.bool)
    canvas[0, :64, :64] = False
    canvas[1, :30, :46] = False
    assert valid_fractions(canvas, torch.tensor(sizes))[0].tolist() == pytest.approx([0.8, 0.8])


def test_sampling_clamps_to_the_cells_overlapping_the_valid_region():
    logits = torch.arange(16.0).view(1, 4, 4)  # a 4 x 4 canvas grid; the image fills 2.5 x 2.5 cells
    fractions = torch.tensor([[0.625, 0.625]])
    corners = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]])
    grid = canvas_grid(corners, fractions, (4, 4))
    values = F.grid_sample(logits[:, None], grid[:, :, None], mode="bilinear", align_corners=False)[:, 0, :, 0]
    assert values.tolist() == [[0.0, 10.0, 2.0]]  # cells (0, 0), (2, 2), (0, 2): row 3 / column 3 never read
    assert canvas_grid(corners, fractions, (4, 4)).abs().max() <= 1


def test_zero_matches_give_finite_zero_losses_connected_to_the_graph():
    model, outputs, targets, _ = two_image_case({})
    losses = MaskLoss()(outputs, targets, match([], []), num_boxes=1, model=model)
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert model.scale.grad is not None and model.scale.grad.item() == 0


def test_box_only_instances_add_no_mask_loss():
    # Image 1's prediction is wrong for its target: counted, it would add a large loss.
    model, outputs, targets, indices = two_image_case({(0, 2): RECT_A, (1, 5): RECT_A})
    targets[1]["has_mask"] = torch.tensor([False])
    targets[0]["has_mask"] = torch.tensor([True])
    losses = MaskLoss()(outputs, targets, indices, num_boxes=2, model=model)
    assert model.requests[-1] == [(0, 2)]  # only the pair with a mask is predicted
    alone = MaskLoss()(outputs, targets, match([2], []), num_boxes=2, model=model)
    for key in ("loss_mask", "loss_dice"):
        assert losses[key].item() == pytest.approx(alone[key].item(), abs=1e-6), key
        assert losses[key].item() < 0.05, key  # the one counted pair is perfect

    targets[0]["has_mask"] = torch.tensor([False])  # no mask left: zero losses, still on the graph
    nothing = MaskLoss()(outputs, targets, indices, num_boxes=2, model=model)
    assert nothing["loss_mask"].item() == 0 and nothing["loss_dice"].item() == 0
    nothing["loss_mask"].backward()
    assert model.scale.grad is not None


def test_gradient_reaches_the_mask_predictions():
    model, outputs, targets, indices = two_image_case({(0, 2): RECT_B, (1, 5): RECT_A})
    losses = MaskLoss()(outputs, targets, indices, num_boxes=2, model=model)
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert model.scale.grad is not None and model.scale.grad.item() > 0


def test_targets_without_masks_are_an_error_and_sets_without_context_are_skipped():
    model, outputs, targets, indices = two_image_case({})
    assert MaskLoss()({"pred_logits": torch.zeros(2, 3, 2)}, targets, indices, 1) == {}
    del targets[1]["masks"]
    with pytest.raises(ValueError, match="the model that made the outputs"):
        MaskLoss()(outputs, targets, indices, 1)
    with pytest.raises(KeyError, match="masks=True"):
        MaskLoss()(outputs, targets, indices, 1, model=model)


# --- the real DETRsegm --------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _nano():
    from rfdetr.models import build_detector
    torch.manual_seed(0)
    return build_detector(model_config("nano", num_queries=20)).eval()


def test_real_detrsegm_losses_backpropagate_into_the_mask_head_only():
    import copy

    from rfdetr.models.segmentation import DETRsegm
    model = DETRsegm(copy.deepcopy(_nano()), mask_head="light").train()
    sizes = [(96, 128), (128, 64)]
    generator = torch.Generator().manual_seed(0)
    samples = nested_tensor_from_images([torch.randn(3, h, w, generator=generator) for h, w in sizes])
    outputs = model(NestedTensor(samples.tensors, samples.mask))
    criterion = build_criterion(model_config("nano", group_detr=1), TrainConfig())
    add_mask_losses(criterion, 1.0, 1.0)
    targets = [target(sizes[0], [RECT_A, RECT_B]), target(sizes[1], [RECT_B])]
    losses = criterion(outputs, targets, model=model)
    assert torch.isfinite(losses["loss_mask"]) and torch.isfinite(losses["loss_dice"])
    criterion.weighted_loss(losses).backward()
    head_grads = [p.grad for n, p in model.named_parameters() if n.startswith("mask_head.")]
    assert head_grads and all(g is not None for g in head_grads)
    assert all(p.grad is None for p in model.detr.parameters())


def test_each_models_outputs_are_scored_with_the_mask_head_of_the_model_given():
    # The EMA copy's validation losses must come from the EMA's mask head, not the trained one's: the
    # criterion computes masks with the model it is given (the training loop gives the one that ran).
    import copy

    from rfdetr.models.segmentation import DETRsegm
    from rfdetr.training.ema import ModelEMA
    live = DETRsegm(copy.deepcopy(_nano()), mask_head="light").eval()
    ema = ModelEMA(live, decay=0.9, tau=0).module
    with torch.no_grad():
        for parameter in ema.mask_head.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    sizes = [(96, 96)]
    images = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    criterion = build_criterion(model_config("nano", group_detr=1, aux_loss=False), TrainConfig())
    add_mask_losses(criterion, 1.0, 1.0)
    targets = [target(sizes[0], [RECT_A, RECT_B])]
    with torch.no_grad():
        live_out, ema_out = live(images), ema(images)
        torch.testing.assert_close(ema_out["pred_logits"], live_out["pred_logits"])  # same detector
        live_losses = criterion(live_out, targets, model=live)
        ema_losses, matches = criterion.losses_and_matches(ema_out, targets, ema)
        ema_outputs_live_head = criterion(ema_out, targets, model=live)
        pairs = matches[""][0][0]
        ema_logits = ema.predict_masks(ema_out["mask_context"], torch.zeros_like(pairs), pairs)
        live_logits = live.predict_masks(ema_out["mask_context"], torch.zeros_like(pairs), pairs)
    assert not torch.isclose(ema_losses["loss_dice"], live_losses["loss_dice"])
    assert ema_outputs_live_head["loss_dice"].equal(live_losses["loss_dice"])  # the head decides, not the outputs
    assert not ema_logits.equal(live_logits)


def test_evaluation_scores_and_post_processes_each_model_with_its_own_mask_head():
    # The training loop's evaluate() gives the evaluated model (here the EMA copy) to the criterion;
    # the trainer binds post-processing to that model too.
    import copy
    import functools

    from rfdetr.models.mask_postprocess import PostProcessMasks
    from rfdetr.models.segmentation import DETRsegm
    from rfdetr.training.ema import ModelEMA
    from rfdetr.training.engine import evaluate
    live = DETRsegm(copy.deepcopy(_nano()), mask_head="light").eval()
    ema = ModelEMA(live, decay=0.9, tau=0).module
    with torch.no_grad():
        for parameter in ema.mask_head.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    samples = nested_tensor_from_images([torch.randn(3, 96, 96, generator=torch.Generator().manual_seed(0))])
    targets = [{**target((96, 96), [RECT_A, RECT_B]), "image_id": torch.tensor(1)}]
    criterion = build_criterion(model_config("nano", group_detr=1, aux_loss=False), TrainConfig())
    add_mask_losses(criterion, 1.0, 1.0)

    class Collect:
        def update(self, image_ids, results):
            self.masks = results[0]["masks"]

        def summarize(self):
            return {}

    def run(model) -> tuple[dict, torch.Tensor]:
        collect = Collect()
        postprocess = functools.partial(PostProcessMasks(20, 5), model=model)  # as Trainer._postprocess(model)
        result = evaluate(model, [(samples, targets)], criterion=criterion, postprocess=postprocess,
                          evaluator=collect, class_rows=[0, 1], device=torch.device("cpu"), progress="none")
        return result["losses"], collect.masks

    (live_losses, live_masks), (ema_losses, ema_masks) = run(live), run(ema)
    with torch.no_grad():
        expected = criterion(ema(samples), targets, model=ema)
    assert ema_losses["loss_dice"] == pytest.approx(float(expected["loss_dice"]))
    assert ema_losses["loss_dice"] != pytest.approx(live_losses["loss_dice"])
    assert not torch.equal(ema_masks, live_masks)
