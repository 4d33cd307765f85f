"""Training the built-in mask head of a segmentation size (upstream 1.11's ``RFDETRSegNano`` ...).

In training the head returns, per decoder layer, the embeddings whose products are the masks, and the
loss computes the matched queries' masks only; at eval it returns every query's dense mask. Both must
give the same loss; the head must learn; ``RFDETR.train()``, the single-stage script, resume and ONNX
export must work on such a model, from a file written by upstream 1.11.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import skimage.data
import torch
from upstream_1_11_files import write_file

from rfdetr import RFDETR
from rfdetr.checkpoints.files import read_checkpoint
from rfdetr.config import RunConfig, TrainConfig, mask_config, model_config
from rfdetr.datasets.synthetic import make_synthetic_coco
from rfdetr.models import build_criterion, build_detector
from rfdetr.models.mask_losses import add_mask_losses
from rfdetr.models.seg_head import dense_mask_logits, matched_mask_logits

TINY = dict(resolution=96, num_queries=20, group_detr=2)
TINY_TRAIN = dict(epochs=1, batch_size=2, grad_accum_steps=1, multi_scale=False, num_workers=0, device="cpu",
                  tensorboard=False, max_steps_per_epoch=2)
SHAPES = ("circle", "square", "triangle")


def _tiny_seg_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_detector(model_config("seg-nano", num_classes=3, **TINY))


def _batch():
    """Two images of different sizes (the second is padded) with one square-ish mask each."""
    images, targets = [torch.rand(3, 96, 96), torch.rand(3, 72, 96)], []
    for height, (top, left, side) in zip((96, 72), ((10, 20, 40), (30, 8, 30))):
        mask = torch.zeros(1, height, 96, dtype=torch.uint8)
        mask[0, top:top + side, left:left + side] = 1
        box = torch.tensor([[(left + side / 2) / 96, (top + side / 2) / height, side / 96, side / height]])
        targets.append({"labels": torch.tensor([1]), "boxes": box, "masks": mask,
                        "size": torch.tensor([height, 96])})
    return images, targets


def _criterion(config):
    train = TrainConfig(dataset_dir="unused")
    criterion = build_criterion(config, train)
    add_mask_losses(criterion, 5.0, 5.0, suffixes=[f"_{layer}" for layer in range(config.dec_layers - 1)])
    return criterion


def test_matched_mask_logits_equal_the_dense_ones():
    generator = torch.Generator().manual_seed(0)
    pixels, queries = torch.randn(3, 8, 5, 7, generator=generator), torch.randn(3, 11, 8, generator=generator)
    bias = torch.tensor([0.25])
    batch_index, query_index = torch.tensor([2, 0, 2, 1, 0]), torch.tensor([4, 10, 0, 3, 10])
    dense = dense_mask_logits(pixels, queries, bias)
    matched = matched_mask_logits(pixels, queries, bias, batch_index, query_index)
    torch.testing.assert_close(matched, dense[batch_index, query_index])


def test_training_embeddings_give_the_loss_of_the_dense_masks():
    model = _tiny_seg_model().train()
    images, targets = _batch()
    outputs = model(images)
    assert "pred_masks" not in outputs  # training never builds every query's mask
    criterion = _criterion(model.config)
    losses, matches = criterion.losses_and_matches(outputs, targets, model=model)
    layers = [f"_{layer}" for layer in range(model.config.dec_layers - 1)]
    assert {f"loss_mask{s}" for s in ["", *layers]} <= set(losses) and "loss_mask_enc" not in losses
    # The same output sets with every query's dense mask instead of the embeddings: the same losses.
    dense = {key: value for key, value in outputs.items() if key != "aux_outputs"}
    dense["aux_outputs"] = [dict(aux) for aux in outputs["aux_outputs"]]
    for output_set in [dense, *dense["aux_outputs"]]:
        parts = [output_set.pop(k) for k in ("pred_mask_pixels", "pred_mask_queries", "pred_mask_bias")]
        output_set["pred_masks"] = dense_mask_logits(*parts)
    dense_losses, dense_matches = criterion.losses_and_matches(dense, targets, model=model)
    as_lists = lambda found: [(q.tolist(), t.tolist()) for q, t in found[""]]  # noqa: E731
    assert as_lists(matches) == as_lists(dense_matches)
    for key in losses:
        torch.testing.assert_close(losses[key], dense_losses[key], msg=key)
    # The padded image's mask is compared on its own region: its loss is finite and the head gets gradients.
    criterion.weighted_loss(losses).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.segmentation_head.parameters())


@pytest.mark.slow  # 12 optimizer steps: a training run, outside make check
def test_the_built_in_head_learns_masks():
    model = _tiny_seg_model(seed=1).train()
    images, targets = _batch()
    criterion = _criterion(model.config)
    optimizer = torch.optim.AdamW(model.segmentation_head.parameters(), lr=1e-3)
    history = []
    for _ in range(12):
        losses = criterion(model(images), targets, model=model)
        loss = losses["loss_mask"] + losses["loss_dice"]
        history.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert history[-1] < 0.5 * history[0], history


def test_run_config_fits_the_mask_head_to_the_model():
    seg, plain = model_config("seg-nano"), model_config("nano")
    train = TrainConfig(dataset_dir="unused")
    built_in = mask_config("seg-nano", built_in=True)
    assert (built_in.mask_head, built_in.frozen_detector, built_in.mask_loss_coef) == ("built-in", False, 5.0)
    RunConfig(stage="joint", model=seg, train=train, mask=built_in)
    with pytest.raises(ValueError, match="masks stale"):
        RunConfig(stage="detector", model=seg, train=train)
    with pytest.raises(ValueError, match="does not fit"):
        RunConfig(stage="joint", model=seg, train=train, mask=mask_config("seg-nano", frozen_detector=False))
    with pytest.raises(ValueError, match="does not fit"):
        RunConfig(stage="joint", model=plain, train=train, mask=built_in)
    with pytest.raises(ValueError, match="trains with its detector"):
        RunConfig(stage="masks", model=seg, train=train, mask=built_in.model_copy(update={"frozen_detector": True}))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("shapes") / "data", num_train=4, num_valid=2, num_test=0,
                               image_size=(96, 96), classes=SHAPES)


@pytest.fixture(scope="module")
def seg_file(tmp_path_factory):
    return write_file("seg-nano", "total", tmp_path_factory.mktemp("upstream") / "checkpoint_best_total.pth")


@pytest.mark.slow  # two short training runs and a resume
def test_train_fine_tunes_a_1_11_segmentation_model(seg_file, shapes, tmp_path):
    from rfdetr.training.stages import resume_run

    wrapper = RFDETR(pretrain_weights=seg_file, device="cpu", **TINY)
    before = copy.deepcopy(wrapper.model.segmentation_head.state_dict())
    result = wrapper.train(dataset_dir=str(shapes), output_dir=str(tmp_path / "run"), **TINY_TRAIN)
    record = result.history[-1]
    assert {"train_loss_mask", "train_loss_dice", "train_loss_mask_0", "valid_loss_mask"} <= set(record)
    assert "valid_segm_AP" in record or any(k.startswith("valid_segm") for k in record)
    last = read_checkpoint(tmp_path / "run" / "checkpoint.pth")
    assert last["run"]["stage"] == "joint" and last["masks"]["mask_head"] == "built-in"
    assert any(not torch.equal(before[k], v) for k, v in wrapper.model.segmentation_head.state_dict().items())
    # The best file predicts masks by itself, in this package's way (the weights are ours now).
    reloaded = RFDETR(pretrain_weights=tmp_path / "run" / "checkpoint_best_total.pth", device="cpu")
    assert reloaded.config.size == "seg-nano" and reloaded.classes.names == list(SHAPES)
    detections = reloaded.predict(skimage.data.coffee(), threshold=0.0)
    assert detections.mask is not None and detections.mask.shape[1:] == skimage.data.coffee().shape[:2]
    trainer, _ = resume_run(tmp_path / "run" / "checkpoint.pth", {"epochs": 2})
    assert trainer.fit().history[-1]["epoch"] == 1


@pytest.mark.slow  # a training run through the script
def test_single_stage_script_trains_the_built_in_head(seg_file, shapes, tmp_path):
    from rfdetr.cli.training import single_stage_main

    run = tmp_path / "run"
    code = single_stage_main(["--size", "seg-nano", "--init_ckpt", str(seg_file), "--dataset_dir", str(shapes),
                              "--output_dir", str(run), "--epochs", "1", "--batch", "2", "--accum", "1",
                              "--resolution", "96", "--num_queries", "20", "--group_detr", "2", "--workers", "0",
                              "--device", "cpu", "--multi_scale", "0", "--tensorboard", "0"])
    assert code in (0, None)
    stored = read_checkpoint(run / "checkpoint.pth")
    assert stored["masks"]["mask_head"] == "built-in"
    assert any(key.startswith("segmentation_head.") for key in stored["model"])
    assert not any(key.startswith("detr.") for key in stored["model"])
    summary = json.loads((run / "single_stage_config.json").read_text())
    assert summary["mask_head"] == "built-in"
    assert summary["parameter_counts"]["mask_head_trainable"] > 0


@pytest.mark.slow  # an ONNX export (~15 s)
def test_export_of_a_1_11_segmentation_model_predicts_the_same_masks(seg_file, tmp_path):
    from rfdetr.cli.main import main
    from rfdetr.export import ONNX_FILE, ONNXDetector

    assert main(["export", str(seg_file), "--out", str(tmp_path / "export")]) == 0
    path = tmp_path / "export" / ONNX_FILE
    wrapper = RFDETR(pretrain_weights=seg_file, device="cpu")
    photo = skimage.data.coffee()
    ours, onnx = wrapper.predict(photo, threshold=0.6), ONNXDetector(path).predict(photo, threshold=0.6)
    assert len(ours) > 0 and list(ours.data["class_name"]) == list(onnx.data["class_name"])
    np.testing.assert_allclose(ours.xyxy, onnx.xyxy, atol=0.5)
    overlap = (ours.mask & onnx.mask).sum((1, 2)) / (ours.mask | onnx.mask).sum((1, 2))
    assert overlap.min() >= 0.99
