"""Every checkpoint kind x every operation: the right class for a known detection, or a clear error
before any file is written (see checkpoint_kinds.py for the kinds and the boosted ``dog`` row)."""

from __future__ import annotations

import logging

import pytest
import skimage.data
import torch
from checkpoint_kinds import BOOST, DATASET_NAMES, KINDS, boost, dataset_table, make_dataset, top_class, write_kind

import shrink_head
import strip_class_heads
import train_seg_stage2
from rfdetr import RFDETRNano
from rfdetr.checkpoints.durable import save_checkpoint
from rfdetr.checkpoints.files import CheckpointError, is_class_head_key, read_checkpoint
from rfdetr.checkpoints.loading import load_model
from rfdetr.checkpoints.upstream import PredictStyle
from rfdetr.inference import prepare_batch
from rfdetr.models import PostProcess
from rfdetr.models.lwdetr import CLASS_PRIOR_BIAS

# (class name, category id) of the top detection when the file is used on its own.
ALONE = {"upstream-coco": ("dog", 18), "upstream-roboflow": ("dog", 2), "upstream-nameless": ("class_2", 2),
         "upstream-1.11": ("dog", 2), "upstream-1.11-ckpt": ("dog", 2),
         "ours-stage1": ("dog", 2), "shrunk": ("dog", 18), "stage2": ("dog", 2)}
# With the dataset (train(), stage 2) every kind that has a dog row must predict the dataset's dog.
WITH_DATASET = ("dog", 2)
WORKING = [kind for kind in KINDS if kind != "stripped"]
STRIPPED_ERROR = "no class heads"
# One optimizer step of two 64 px images with 20 queries: enough to run train() end to end.
TINY_MODEL = dict(resolution=64, num_queries=20, group_detr=1, gradient_checkpointing=False)
TINY_TRAIN = dict(epochs=1, batch_size=2, grad_accum_steps=1, multi_scale=False, num_workers=0, device="cpu",
                  tensorboard=False)


@pytest.fixture(scope="module")
def kind_file(tmp_path_factory, upstream_nano_file):
    folder = tmp_path_factory.mktemp("kinds")
    written = {}

    def get(kind: str):
        if kind not in written:
            written[kind] = write_kind(kind, folder, upstream_nano_file)
        return written[kind]

    return get


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("animals") / "dataset")


@pytest.fixture(scope="module")
def photo():
    return skimage.data.astronaut()


@pytest.mark.parametrize("kind", WORKING)
def test_predict(kind, kind_file, photo):
    model = RFDETRNano(pretrain_weights=kind_file(kind), device="cpu")
    detections = model.predict(photo, threshold=0.0)
    assert top_class(detections) == ALONE[kind]
    assert (detections.mask is not None) == (kind == "stage2")


def test_predict_stripped_says_what_to_pass(kind_file):
    with pytest.raises(CheckpointError, match=r"no class heads.*class_names=\[\.\.\.\] or num_classes=N"):
        RFDETRNano(pretrain_weights=kind_file("stripped"), device="cpu")


@pytest.mark.slow  # a training run from each kind of checkpoint
@pytest.mark.parametrize("kind", KINDS)
def test_train(kind, kind_file, data, tmp_path, photo):
    wrapper = RFDETRNano(pretrain_weights=kind_file(kind), device="cpu",
                         **({"num_classes": len(DATASET_NAMES)} if kind == "stripped" else {}), **TINY_MODEL)
    wrapper.train(dataset_dir=str(data), output_dir=str(tmp_path / "run"), **TINY_TRAIN)
    assert wrapper.classes == dataset_table()
    if kind == "stripped":  # nothing trained to keep: fresh heads for the dataset's classes
        assert wrapper.model.class_embed.out_features == len(DATASET_NAMES) + 1
    else:
        detections = wrapper.predict(photo, threshold=0.0)
        assert top_class(detections) == WITH_DATASET
        assert (detections.mask is not None) == (kind == "stage2")
    # A mask model trains its mask head on its frozen detector (stage 2), a detector trains as stage 1.
    run = read_checkpoint(tmp_path / "run" / "checkpoint.pth")["run"]
    assert run["stage"] == ("masks" if kind == "stage2" else "detector")
    assert wrapper.style == PredictStyle()  # the weights are ours now, whatever release wrote the file


@pytest.mark.parametrize("kind", WORKING)
def test_stage2_detector(kind, kind_file, photo):
    table = dataset_table()
    loaded = load_model("nano", kind_file(kind), class_names=table, masks=False, require_trained_heads=True)
    detector, config = loaded.model, loaded.config
    batch, sizes, _ = prepare_batch(photo, config.resolution)
    with torch.no_grad():
        result = PostProcess(10)(detector.eval()(batch), sizes, class_rows=table.class_rows)[0]
    label = int(result["labels"][0])
    assert (table.name_of(label), table.category_id_of(label)) == WITH_DATASET


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["upstream-roboflow", "upstream-1.11"])
def test_stage2_run_from_an_upstream_fine_tune_keeps_its_classes(kind, kind_file, data, tmp_path, photo):
    # The 1.2 file labels dog with head row 2 (= its category id), the 1.11 file with row 1 (its class_names
    # index, the project takes no row); the dataset's label of dog is 1.
    run = tmp_path / "stage2"
    code = train_seg_stage2.main(["--checkpoint", str(kind_file(kind)), "--dataset_dir", str(data),
                                  "--output_dir", str(run), "--resolution", "64", "--epochs", "1", "--batch", "2",
                                  "--accum", "1", "--multi_scale", "0", "--workers", "0", "--device", "cpu",
                                  "--tensorboard", "0"])
    assert code == 0
    checkpoint = read_checkpoint(run / "checkpoint_best_total.pth")
    assert checkpoint["classes"] == dataset_table().to_dict()
    model = RFDETRNano(pretrain_weights=run / "checkpoint_best_total.pth", device="cpu")
    assert top_class(model.predict(photo, threshold=0.0)) == WITH_DATASET


def test_stage2_refuses_a_stripped_detector_before_writing(kind_file, data, tmp_path, capsys):
    run = tmp_path / "stage2"
    code = train_seg_stage2.main(["--checkpoint", str(kind_file("stripped")), "--dataset_dir", str(data),
                                  "--output_dir", str(run), "--size", "nano", "--device", "cpu"])
    assert code == 2 and STRIPPED_ERROR in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.parametrize("kind", WORKING)
def test_shrink(kind, kind_file, tmp_path, capsys, photo):
    out = tmp_path / "shrunk.pth"
    keep = ["class_3", "class_2"] if kind == "upstream-nameless" else ["horse", "dog"]
    assert shrink_head.main(["--in_ckpt", str(kind_file(kind)), "--out_ckpt", str(out), "--keep", *keep]) == 0, \
        capsys.readouterr().err
    state = read_checkpoint(out)["model"]
    heads = [key for key in state if is_class_head_key(key)]
    assert len(heads) == 28 and all(state[key].shape[0] == 3 for key in heads)
    model = RFDETRNano(pretrain_weights=out, device="cpu")
    assert model.class_names == {0: keep[0], 1: keep[1]}
    assert top_class(model.predict(photo, threshold=0.0)) == ALONE[kind]


@pytest.mark.parametrize("kind", WORKING)
def test_strip(kind, kind_file, tmp_path, capsys):
    out = tmp_path / "stripped.pth"
    assert strip_class_heads.main([str(kind_file(kind)), str(out)]) == 0
    assert "removed 28 class-head tensors" in capsys.readouterr().out
    assert not [key for key in read_checkpoint(out)["model"] if is_class_head_key(key)]
    model = RFDETRNano(pretrain_weights=out, class_names=list(DATASET_NAMES), device="cpu")
    assert model.masks == (kind == "stage2")
    assert torch.all(model.model.state_dict()[f"{'detr.' if model.masks else ''}class_embed.bias"]
                     == torch.tensor(CLASS_PRIOR_BIAS))


@pytest.mark.parametrize("script", ["shrink", "strip"])
def test_surgery_on_a_stripped_file_writes_nothing(script, kind_file, tmp_path, capsys):
    out = tmp_path / "out.pth"
    source = str(kind_file("stripped"))
    code = (shrink_head.main(["--in_ckpt", source, "--out_ckpt", str(out), "--keep", "dog"]) if script == "shrink"
            else strip_class_heads.main([source, str(out)]))
    assert code == 2 and STRIPPED_ERROR in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_class_names_in_another_order_keep_the_trained_rows(kind_file, photo):
    model = RFDETRNano(pretrain_weights=kind_file("ours-stage1"), class_names=["horse", "dog", "cat"], device="cpu")
    assert model.class_names == {0: "horse", 1: "dog", 2: "cat"}
    assert top_class(model.predict(photo, threshold=0.0)) == WITH_DATASET
    subset = RFDETRNano(pretrain_weights=kind_file("ours-stage1"), class_names=["dog"], device="cpu")
    assert top_class(subset.predict(photo, threshold=0.0)) == WITH_DATASET


def test_new_class_names_rebuild_the_heads_with_a_warning(kind_file, caplog):
    with caplog.at_level(logging.WARNING):
        model = RFDETRNano(pretrain_weights=kind_file("ours-stage1"), class_names=["dog", "zebra"], device="cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("['zebra']" in message and "re-initialised" in message for message in warnings), warnings
    assert torch.all(model.model.class_embed.bias == torch.tensor(CLASS_PRIOR_BIAS))


def test_nameless_upstream_file_logs_the_convention(kind_file, caplog):
    with caplog.at_level(logging.WARNING):
        model = RFDETRNano(pretrain_weights=kind_file("upstream-nameless"), device="cpu")
    assert model.class_names == {1: "class_1", 2: "class_2", 3: "class_3"}
    assert any("row r = category id r" in r.getMessage() for r in caplog.records)


def test_nameless_upstream_file_keeps_its_last_class(kind_file, tmp_path, photo):
    # Row R-1 of an upstream head is a real class (label = category id): move the boost from dog to horse (id 3).
    checkpoint = read_checkpoint(kind_file("upstream-nameless"))
    path = tmp_path / "horse.pth"
    save_checkpoint({**checkpoint, "model": boost(boost(checkpoint["model"], 2, -BOOST), 3)}, path)
    assert top_class(RFDETRNano(pretrain_weights=path, device="cpu").predict(photo, threshold=0.0)) == ("class_3", 3)
    table = dataset_table()
    loaded = load_model("nano", path, class_names=table, masks=False, require_trained_heads=True)
    detector, config = loaded.model, loaded.config
    batch, sizes, _ = prepare_batch(photo, config.resolution)
    with torch.no_grad():
        label = int(PostProcess(10)(detector.eval()(batch), sizes, class_rows=table.class_rows)[0]["labels"][0])
    assert table.name_of(label) == "horse"
