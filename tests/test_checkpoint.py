"""Reading upstream and own checkpoints, strict loading, head rebuilds, atomic saving."""

from __future__ import annotations

import errno

import pytest
import torch
from conftest import golden

from rfdetr.checkpoints.durable import save_checkpoint
from rfdetr.checkpoints.files import (
    CLASS_HEAD_PATTERNS,
    CheckpointError,
    checkpoint_class_table,
    checkpoint_size,
    load_state_dict,
    make_checkpoint,
    read_checkpoint,
)
from rfdetr.classes import ClassTable
from rfdetr.config import model_config
from rfdetr.models import build_detector


def test_upstream_checkpoint_loads_strictly_and_reproduces_golden(upstream_nano_file):
    checkpoint = read_checkpoint(upstream_nano_file)  # weights_only=True with Namespace allowed
    assert checkpoint_size(checkpoint) == "nano"
    assert checkpoint_class_table(checkpoint) == ClassTable.coco()
    model = build_detector(model_config("nano"))
    report = load_state_dict(model, checkpoint["model"], size="nano")
    assert report.missing == report.unexpected == report.excluded == []
    g = golden("nano")
    with torch.no_grad():
        out = model.eval()(g["input_a"])
    torch.testing.assert_close(out["pred_logits"], g["out_a"]["pred_logits"], atol=1e-4, rtol=0)


def test_other_class_count_is_an_error_unless_the_heads_are_excluded(upstream_nano_file):
    checkpoint = read_checkpoint(upstream_nano_file)
    model = build_detector(model_config("nano", num_classes=3))
    fresh_head = model.class_embed.weight.clone()
    # A load that keeps the heads never re-initialises them on a shape mismatch.
    with pytest.raises(CheckpointError, match=r"enc_out_class_embed\.0\.weight is \[91, 256\] in the file but "
                                              r"\[4, 256\].*pass class_names"):
        load_state_dict(model, checkpoint["model"], source=str(upstream_nano_file))
    with pytest.raises(CheckpointError, match="rf-detr-nano-seed0.pth does not fit this model's class head"):
        load_state_dict(model, checkpoint["model"], source=str(upstream_nano_file))
    report = load_state_dict(model, checkpoint["model"], exclude=CLASS_HEAD_PATTERNS)
    assert sorted(report.excluded) == sorted(
        ["class_embed.weight", "class_embed.bias"]
        + [f"transformer.enc_out_class_embed.{g}.{p}" for g in range(13) for p in ("weight", "bias")])
    assert torch.equal(model.class_embed.weight, fresh_head)
    assert model.class_embed.out_features == 4 and model.transformer.enc_out_class_embed[12].out_features == 4
    assert torch.equal(model.bbox_embed.layers[0].weight, checkpoint["model"]["bbox_embed.layers.0.weight"])


def test_stripped_state_without_heads_is_an_error_naming_what_to_pass(upstream_nano_file):
    state = {k: v for k, v in read_checkpoint(upstream_nano_file)["model"].items() if "class_embed" not in k}
    model = build_detector(model_config("nano"))
    with pytest.raises(CheckpointError, match=r"stripped.*class_names=\[\.\.\.\] or num_classes=N"):
        load_state_dict(model, state, strict=False, source="stripped.pth")


def test_checkpoint_of_another_size_is_refused_naming_both(upstream_nano_file):
    checkpoint = read_checkpoint(upstream_nano_file)
    model = build_detector(model_config("small"))
    with pytest.raises(CheckpointError, match="made for nano, the model is small"):
        load_state_dict(model, checkpoint["model"], size=checkpoint_size(checkpoint))


def test_strict_loading_reports_missing_keys_and_exclusions_work(upstream_nano_file):
    state = dict(read_checkpoint(upstream_nano_file)["model"])
    del state["bbox_embed.layers.2.bias"]
    model = build_detector(model_config("nano"))
    with pytest.raises(CheckpointError, match="1 missing keys"):
        load_state_dict(model, state)
    report = load_state_dict(model, state, exclude=["bbox_embed.*", "backbone.0.projector.*"])
    assert "backbone.0.projector.stages.0.1.weight" in report.excluded
    report = load_state_dict(model, state, strict=False)
    assert report.missing == ["bbox_embed.layers.2.bias"]


def test_own_checkpoint_round_trip_is_atomic(tmp_path):
    config = model_config("nano", num_classes=2)
    model = build_detector(config)
    classes = ClassTable.from_names(["cat", "dog"])
    path = save_checkpoint(make_checkpoint(model, config, classes, epoch=3), tmp_path / "run" / "checkpoint.pth")
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pth"]  # no temporary left
    checkpoint = read_checkpoint(path)
    assert checkpoint_class_table(checkpoint) == classes
    assert checkpoint_size(checkpoint) == "nano" and checkpoint["epoch"] == 3


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"model": {"w": torch.ones(1)}}, path)

    def broken_save(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(1)}}, path)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_a_full_disk_keeps_the_previous_file_and_says_what_was_needed(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"model": {"w": torch.ones(1)}}, path)

    def full_disk(obj, target):
        try:  # as torch's zip writer reports it: a RuntimeError raised while handling the OSError
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 44487616 vs 44487504")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"needs about 4 MB.*previous checkpoint.pth is intact") as caught:
        save_checkpoint({"model": {"w": torch.zeros(1 << 20)}}, path)
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temporary left


def test_unreadable_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(junk)
    bare = tmp_path / "bare.pth"
    torch.save({"class_embed.bias": torch.zeros(5)}, bare)
    assert checkpoint_class_table(read_checkpoint(bare)).num_rows == 5


def test_upstream_class_names_follow_the_plus_one_convention():
    checkpoint = {"model": {"class_embed.bias": torch.zeros(4)}, "args": {"class_names": ["a", "b", "c"]}}
    table = checkpoint_class_table(checkpoint)
    assert [table.name_of(label) for label in (1, 2, 3)] == ["a", "b", "c"]
    assert table.num_rows == 4
