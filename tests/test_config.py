"""Per-size configs hold the upstream 1.2.1 native geometry; bad values are refused."""

from __future__ import annotations

import pydantic
import pytest
from conftest import reference_configs

from rfdetr.config import SIZES, TrainConfig, model_config

GEOMETRY_FIELDS = [
    "encoder", "hidden_dim", "patch_size", "num_windows", "dec_layers", "sa_nheads", "ca_nheads", "dec_n_points",
    "num_queries", "num_select", "group_detr", "projector_scale", "out_feature_indexes", "positional_encoding_size",
    "resolution", "num_classes",
    "dim_feedforward", "aux_loss",
]


@pytest.mark.parametrize("size", SIZES)
def test_presets_match_upstream_summary(size):
    config = model_config(size)
    summary = reference_configs()[size]["summary"]
    assert {f: getattr(config, f) for f in GEOMETRY_FIELDS} == {f: summary[f] for f in GEOMETRY_FIELDS}
    assert config.num_feature_levels == summary["num_feature_levels"]
    assert config.pretrain_weights == f"rf-detr-{size}.pth"


def test_overrides_are_validated():
    assert model_config("nano", num_classes=3).num_classes == 3
    with pytest.raises(pydantic.ValidationError, match="model_size"):
        model_config("nano", model_size="nano")  # unknown keywords are an error, not dropped
    with pytest.raises(pydantic.ValidationError, match="multiple of"):
        model_config("base", resolution=500)
    with pytest.raises(pydantic.ValidationError, match="ascending"):
        model_config("nano", projector_scale=["P5", "P3"])
    with pytest.raises(ValueError, match="unknown model size"):
        model_config("huge")


def test_assignment_is_validated_too():
    config = model_config("small")
    with pytest.raises(pydantic.ValidationError):
        config.resolution = 100


def test_a_stored_run_of_an_earlier_version_reads_its_retired_train_fields():
    from rfdetr.checkpoints.files import stored_run_config

    train = {**TrainConfig(dataset_dir="data").model_dump(), "progress_bar": False}
    run = {"stage": "detector", "model": model_config("nano").model_dump(), "train": train}
    assert stored_run_config({"run": run}).train.progress == "none"
    quiet = stored_run_config({"config": model_config("nano").model_dump(), "train_config": train})
    assert quiet.train.progress == "none"
    shown = stored_run_config({"run": {**run, "train": {**train, "progress_bar": True}}})
    assert shown.train.progress == "auto"


def test_the_stage_follows_from_the_mask_config():
    from rfdetr.config import RunConfig, mask_config

    model, train = model_config("nano"), TrainConfig(dataset_dir="data")
    stages = {RunConfig(model=model, train=train, mask=mask).stage: mask
              for mask in (None, mask_config("nano"), mask_config("nano", frozen_detector=False))}
    assert list(stages) == ["detector", "masks", "joint"]
    stored = RunConfig(model=model, train=train, mask=stages["masks"]).model_dump()
    assert stored["stage"] == "masks" and RunConfig.model_validate(stored).stage == "masks"
    with pytest.raises(pydantic.ValidationError, match="does not match the mask config"):
        RunConfig.model_validate({**stored, "stage": "joint"})


def test_mask_heads_are_not_named_like_model_sizes_and_earlier_names_still_read():
    from rfdetr.config import MASK_HEADS, MaskConfig, mask_config

    assert not set(MASK_HEADS) & set(SIZES)
    assert mask_config("nano").mask_head == "light" and mask_config("small").mask_head == "detr"
    assert MaskConfig(mask_head="nano").mask_head == "light" and MaskConfig(mask_head="small").mask_head == "detr"
