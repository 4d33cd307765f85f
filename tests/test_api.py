"""The RFDETR wrappers: construction, class convention, predict() end to end."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import skimage.data
import supervision as sv
import torch
from conftest import golden

from rfdetr import RFDETRNano, RFDETRSmall
from rfdetr.checkpoints.files import CheckpointError, read_checkpoint
from rfdetr.classes import ClassTable


@pytest.fixture(scope="module")
def coco_nano(upstream_nano_file):
    return RFDETRNano(pretrain_weights=upstream_nano_file, device="cpu")


def test_random_model_has_the_coco_table_and_rejects_unknown_options():
    model = RFDETRNano(pretrain_weights=None, device="cpu")
    assert model.config.num_classes == 90 and model.model.class_embed.out_features == 91
    assert model.class_names[1] == "person" and 0 not in model.class_names
    with pytest.raises(pydantic.ValidationError, match="model_size"):
        RFDETRNano(pretrain_weights=None, model_size="nano")


def test_predict_on_golden_photo_reproduces_upstream_detections(coco_nano):
    expected = golden("nano")["post_a"][0]
    detections = coco_nano.predict(skimage.data.astronaut(), threshold=0.0)
    assert isinstance(detections, sv.Detections)
    # Upstream ranks all 91 rows; we never return the spare (non-class) rows, so compare with the
    # golden detections whose label is a class, which must all be among ours, in the same order.
    valid = torch.tensor([int(label) in coco_nano.class_names for label in expected["labels"]])
    golden_scores = expected["scores"][valid].numpy()
    golden_labels = expected["labels"][valid].numpy()
    golden_boxes = expected["boxes"][valid].numpy()
    count = len(golden_scores)
    assert 0 < count <= len(detections) == 300
    np.testing.assert_allclose(detections.confidence[:count], golden_scores, atol=2e-5, rtol=0)
    for label, box in zip(golden_labels, golden_boxes):
        same_label = detections.xyxy[detections.class_id == label]
        assert np.abs(same_label - box).max(axis=1).min() < 1e-2
    assert set(detections.class_id.tolist()) <= set(coco_nano.class_names)
    assert detections.data["class_name"][0] == coco_nano.class_names[int(detections.class_id[0])]


def test_threshold_and_list_input(coco_nano):
    photos = [skimage.data.astronaut(), skimage.data.coffee()]
    batch = coco_nano.predict(photos, threshold=0.5)
    assert isinstance(batch, list) and len(batch) == 2
    single = coco_nano.predict(photos[1], threshold=0.5)
    assert (batch[1].confidence > 0.5).all()
    assert len(batch[1]) == len(single)
    # Batched and single forwards round differently (~1e-6), which may swap near-tied detections:
    # every single-image detection must have a twin (class, score, box) in the batched result.
    for box, score, label in zip(single.xyxy, single.confidence, single.class_id):
        twin = ((batch[1].class_id == label) & (np.abs(batch[1].confidence - score) < 1e-4)
                & (np.abs(batch[1].xyxy - box).max(axis=1) < 1e-2))
        assert twin.any(), (box, score, label)
    assert batch[1].xyxy[:, 2].max() <= 600 * 1.1  # original pixels of the 600 px wide photo


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), "0.5", None])
def test_threshold_outside_zero_one_is_refused(coco_nano, threshold):
    with pytest.raises(ValueError, match=r"threshold must be a score in \[0, 1\]"):
        coco_nano.predict(skimage.data.astronaut(), threshold=threshold)


def test_new_class_names_rebuild_only_the_heads(upstream_nano_file):
    model = RFDETRNano(pretrain_weights=upstream_nano_file, class_names=["cat", "dog"], device="cpu")
    assert model.class_names == {0: "cat", 1: "dog"}
    assert model.model.class_embed.out_features == 3
    assert model.model.transformer.enc_out_class_embed[5].out_features == 3
    state = read_checkpoint(upstream_nano_file)["model"]
    assert torch.equal(model.model.query_feat.weight, state["query_feat.weight"])
    detections = model.predict(skimage.data.astronaut(), threshold=0.0)
    assert set(detections.class_id.tolist()) <= {0, 1}


def test_num_classes_matching_the_checkpoint_keeps_its_table(upstream_nano_file):
    model = RFDETRNano(pretrain_weights=upstream_nano_file, num_classes=90, device="cpu")
    assert model.classes == ClassTable.coco()


def test_checkpoint_of_another_size_is_refused(upstream_nano_file):
    with pytest.raises(CheckpointError, match="nano checkpoint but this is a small model"):
        RFDETRSmall(pretrain_weights=upstream_nano_file, device="cpu")


def test_inconsistent_class_arguments_are_refused():
    with pytest.raises(ValueError, match="num_classes=3 but 2 class_names"):
        RFDETRNano(pretrain_weights=None, num_classes=3, class_names=["a", "b"])
