"""Hungarian matcher and SetCriterion: the upstream 1.2.1 training step (golden) and hand-made cases."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import golden

from rfdetr.config import TrainConfig, model_config
from rfdetr.models.criterion import build_criterion, loss_weights, normalising_num_boxes
from rfdetr.models.matcher import HungarianMatcher
from rfdetr.util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, paired_generalized_box_iou

LOSS_RTOL = 1e-4


def _golden_criterion(settings: dict, config):
    assert settings["two_stage"] and not settings["sum_group_losses"]  # the only normalisation built here
    model = config.model_copy(update={k: settings[k] for k in ("num_classes", "group_detr", "aux_loss")})
    train = TrainConfig(**{k: settings[k] for k in ("cls_loss_coef", "bbox_loss_coef", "giou_loss_coef",
                                                    "set_cost_class", "set_cost_bbox", "set_cost_giou",
                                                    "focal_alpha")})
    return build_criterion(model, train)


@pytest.fixture(scope="module")
def train_step(filled_detectors) -> dict:
    """Upstream's training step on nano: train-mode forward of ``input_b``, losses, backward, grad norm."""
    g = golden("nano")["train_step"]
    settings = g["criterion_settings"]
    assert settings["ia_bce_loss"] and not settings["use_varifocal_loss"]
    assert not settings["use_position_supervised_loss"]
    config = model_config("nano")
    model = copy.deepcopy(filled_detectors["nano"]).train()  # its own copy: the backward writes gradients
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert all(p == 0 for p in dropouts)  # the training forward is deterministic
    criterion = _golden_criterion(settings, config)
    outputs = model(golden("nano")["input_b"])
    losses, matches = criterion.losses_and_matches(outputs, g["targets"])
    total = criterion.weighted_loss(losses)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings["clip_max_norm"])
    return {"golden": g, "criterion": criterion, "outputs": outputs, "losses": losses, "matches": matches,
            "total": total.detach(), "grad_norm": grad_norm}


def test_train_step_outputs_cover_all_groups(train_step):
    assert list(train_step["outputs"]["pred_logits"].shape) == train_step["golden"]["train_pred_logits_shape"]


def test_train_step_losses_match_upstream(train_step):
    expected = train_step["golden"]["loss_dict"]
    losses = train_step["losses"]
    assert list(losses) == list(expected)
    for key, value in expected.items():
        assert math.isclose(losses[key].item(), value, rel_tol=LOSS_RTOL), key
    assert train_step["criterion"].weight_dict == train_step["golden"]["weight_dict"]
    assert math.isclose(train_step["total"].item(), train_step["golden"]["total_weighted_loss"], rel_tol=LOSS_RTOL)


def test_train_step_last_layer_matching_matches_upstream(train_step):
    ours = train_step["matches"][""]
    expected = train_step["golden"]["matching_last_layer"]
    assert len(ours) == len(expected)
    for (queries, targets), (expected_queries, expected_targets) in zip(ours, expected):
        assert torch.equal(queries, expected_queries)
        assert torch.equal(targets, expected_targets)


def test_train_step_gradient_norm_matches_upstream(train_step):
    expected = train_step["golden"]["grad_total_norm_before_clip"]
    assert math.isclose(train_step["grad_norm"].item(), expected, rel_tol=LOSS_RTOL)


# Hand-made cases: B = 2 images, 2 groups of 4 queries, 5 class rows.
QUERIES, GROUPS, ROWS = 4, 2, 5
TARGETS = [
    {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
    {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
]
# Which query (within its group) predicts which target: {image: {group: {query: target}}}.
PLACEMENT = {0: {0: {2: 1, 0: 0}, 1: {1: 0, 3: 1}}, 1: {0: {3: 0}, 1: {0: 0}}}


def _perfect_outputs(box_shift: float = 0.0) -> dict:
    """Confident, exact predictions at PLACEMENT's queries; background boxes elsewhere."""
    logits = torch.full((2, QUERIES * GROUPS, ROWS), -8.0)
    boxes = torch.tensor([0.1, 0.9, 0.05, 0.05]).repeat(2, QUERIES * GROUPS, 1)
    for image, groups in PLACEMENT.items():
        for group, queries in groups.items():
            for query, target in queries.items():
                q = group * QUERIES + query
                logits[image, q, TARGETS[image]["labels"][target]] = 8.0
                boxes[image, q] = TARGETS[image]["boxes"][target] + torch.tensor([box_shift, 0, 0, 0])
    return {"pred_logits": logits, "pred_boxes": boxes}


def _criterion(aux_loss: bool = False, dec_layers: int = 1, **train_fields):
    model = model_config("nano", num_classes=ROWS - 1, group_detr=GROUPS, aux_loss=aux_loss, dec_layers=dec_layers)
    return build_criterion(model, TrainConfig(**train_fields))


def _matcher() -> HungarianMatcher:
    return HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)


def test_matcher_finds_perfect_predictions_with_group_offsets():
    indices = _matcher()(_perfect_outputs(), TARGETS, group_detr=GROUPS)
    assert len(indices) == 2
    assert indices[0][0].tolist() == [0, 2, 5, 7] and indices[0][1].tolist() == [0, 1, 0, 1]
    assert indices[1][0].tolist() == [3, 4] and indices[1][1].tolist() == [0, 0]
    assert all(q.dtype == torch.int64 and t.dtype == torch.int64 for q, t in indices)


def test_matcher_single_group_uses_all_queries():
    outputs = _perfect_outputs()
    indices = _matcher()(outputs, TARGETS, group_detr=1)
    assert [len(q) for q, _ in indices] == [2, 1]  # one match per target over the 8 queries
    with pytest.raises(ValueError):
        _matcher()(outputs, TARGETS, group_detr=3)


def test_zero_target_images_give_empty_matches_and_finite_losses():
    outputs = _perfect_outputs()
    outputs["pred_logits"].requires_grad_(True)
    targets = [TARGETS[0], {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    indices = _matcher()(outputs, targets, group_detr=GROUPS)
    assert indices[1][0].numel() == 0 and indices[1][1].numel() == 0
    assert len(indices[0][0]) == 4

    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    assert all(q.numel() == 0 for q, _ in _matcher()(outputs, empty, group_detr=GROUPS))
    for batch_targets in (targets, empty):
        criterion = _criterion()
        losses = criterion(outputs, batch_targets)
        assert all(torch.isfinite(value) for value in losses.values())
        criterion.weighted_loss(losses).backward()
        assert torch.isfinite(outputs["pred_logits"].grad).all()
        outputs["pred_logits"].grad = None
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0


def test_num_boxes_is_targets_times_groups_at_least_one():
    assert normalising_num_boxes(TARGETS, 13, torch.device("cpu")) == 3 * 13
    assert normalising_num_boxes(TARGETS, 1, torch.device("cpu")) == 3
    empty = [{"labels": torch.zeros(0, dtype=torch.int64)}]
    assert normalising_num_boxes(empty, 13, torch.device("cpu")) == 1


def test_box_losses_are_normalised_by_all_groups_targets():
    shift = 0.01
    losses = _criterion()(_perfect_outputs(box_shift=shift), TARGETS)
    # 3 targets x 2 groups matched, each off by `shift` in cx; divided by 3 x 2.
    assert math.isclose(losses["loss_bbox"].item(), shift, rel_tol=1e-5)
    pred = box_cxcywh_to_xyxy(torch.cat([t["boxes"] for t in TARGETS]) + torch.tensor([shift, 0, 0, 0]))
    target = box_cxcywh_to_xyxy(torch.cat([t["boxes"] for t in TARGETS]))
    expected_giou = (1 - paired_generalized_box_iou(pred, target)).sum() * GROUPS / (3 * GROUPS)
    assert math.isclose(losses["loss_giou"].item(), expected_giou.item(), rel_tol=1e-5)
    assert losses["class_error"].item() == 0
    # Background rows are all -8: argmax 0 is not the last row, so all 8 queries count: (|8-2| + |8-1|) / 2.
    assert losses["cardinality_error"].item() == 6.5


def test_ia_bce_equals_its_weighted_bce_definition():
    generator = torch.Generator().manual_seed(0)
    outputs = {"pred_logits": torch.randn(2, QUERIES * GROUPS, ROWS, generator=generator),
               "pred_boxes": torch.rand(2, QUERIES * GROUPS, 4, generator=generator) * 0.5 + 0.25}
    criterion = _criterion()
    losses, matches = criterion.losses_and_matches(outputs, TARGETS)
    loss, indices = losses["loss_ce"], matches[""]
    prob = outputs["pred_logits"].sigmoid()
    pos = torch.zeros_like(prob)
    neg = prob ** 2
    for image, (queries, targets) in enumerate(indices):
        for query, target in zip(queries.tolist(), targets.tolist()):
            label = TARGETS[image]["labels"][target]
            pred = box_cxcywh_to_xyxy(outputs["pred_boxes"][image, query])[None]
            gt = box_cxcywh_to_xyxy(TARGETS[image]["boxes"][target])[None]
            inter = (torch.min(pred[0, 2:], gt[0, 2:]) - torch.max(pred[0, :2], gt[0, :2])).clamp(min=0).prod()
            iou = inter / ((pred[0, 2:] - pred[0, :2]).prod() + (gt[0, 2:] - gt[0, :2]).prod() - inter)
            t = (prob[image, query, label] ** 0.25 * iou ** 0.75).clamp(min=0.01)
            pos[image, query, label] = t
            neg[image, query, label] = 1 - t
    expected = (-pos * prob.log() - neg * (1 - prob).log()).sum() / (3 * GROUPS)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)


def test_pairwise_and_paired_giou_agree():
    boxes = box_cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.6, 0.5, 0.2, 0.4]]))
    pairwise = generalized_box_iou(boxes, boxes)
    torch.testing.assert_close(pairwise.diagonal(), torch.ones(3), atol=0, rtol=0)
    torch.testing.assert_close(paired_generalized_box_iou(boxes, boxes.flip(0)), pairwise.flip(1).diagonal(),
                               atol=0, rtol=0)
    assert pairwise[0, 1] < 0  # disjoint boxes: GIoU below 0


def test_suffixes_weights_and_registered_terms():
    outputs = _perfect_outputs()
    outputs["aux_outputs"] = [_perfect_outputs(), _perfect_outputs()]
    outputs["enc_outputs"] = _perfect_outputs()
    criterion = _criterion(aux_loss=True, dec_layers=3)
    seen = []

    def count_matches(outputs, targets, indices, num_boxes, log=True, model=None):
        seen.append(sum(len(q) for q, _ in indices))
        return {"loss_matches": torch.tensor(float(seen[-1]))}

    criterion.register_loss("matches", count_matches, weights={"loss_matches": 0.5})
    losses, matches = criterion.losses_and_matches(outputs, TARGETS)
    assert seen == [6, 6, 6, 6]  # last layer, two aux layers, encoder: each matched on its own
    assert set(matches) == {"", "_0", "_1", "_enc"}
    assert "class_error" in losses and "class_error_0" not in losses and "cardinality_error_enc" in losses
    for suffix in ("", "_0", "_1", "_enc"):
        assert {"loss_ce" + suffix, "loss_bbox" + suffix, "loss_giou" + suffix} <= set(losses)
    # Exact predictions: no box loss in any of the four sets, which all see the same outputs; the registered
    # term (6 matches, weight 0.5) adds 3. Logging metrics (class_error, cardinality_error) carry no weight.
    assert all(losses[f"loss_{n}{s}"].item() == 0 for n in ("bbox", "giou") for s in ("", "_0", "_1", "_enc"))
    assert losses["loss_matches"].item() == 6
    assert criterion.weighted_loss(losses).item() == pytest.approx(4 * losses["loss_ce"].item() + 3.0, rel=1e-6)

    weights = loss_weights(TrainConfig(), aux_loss=True, dec_layers=3)
    assert weights == {f"loss_{n}{s}": w for s in ("", "_0", "_1", "_enc")
                       for n, w in (("ce", 1.0), ("bbox", 5.0), ("giou", 2.0))}
    assert loss_weights(TrainConfig(), aux_loss=False, dec_layers=3) == {"loss_ce": 1.0, "loss_bbox": 5.0,
                                                                         "loss_giou": 2.0}


def test_weighted_loss_sums_weighted_terms_and_skips_unweighted_ones():
    criterion = _criterion()  # weights 1 / 5 / 2 for ce / bbox / giou, no suffixed copies (no aux loss)
    losses = {"loss_ce": torch.tensor(0.5), "loss_bbox": torch.tensor(0.25), "loss_giou": torch.tensor(0.125),
              "class_error": torch.tensor(50.0), "cardinality_error": torch.tensor(3.0),
              "loss_ce_0": torch.tensor(7.0)}
    assert criterion.weighted_loss(losses).item() == 0.5 + 5 * 0.25 + 2 * 0.125  # 2.0
    weighted = _criterion(aux_loss=True, dec_layers=2, cls_loss_coef=3.0, bbox_loss_coef=1.0, giou_loss_coef=0.5)
    assert weighted.weighted_loss(losses).item() == 3 * 0.5 + 0.25 + 0.5 * 0.125 + 3 * 7.0  # 22.8125


def test_eval_mode_matches_one_group():
    criterion = _criterion().eval()
    outputs = _perfect_outputs()
    _, matches = criterion.losses_and_matches(outputs, TARGETS)
    assert [len(q) for q, _ in matches[""]] == [2, 1]
