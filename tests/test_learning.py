"""It learns: a randomly initialised nano detector fits a small synthetic set (bbox AP50 >= 0.5), then a
mask head trained on the frozen detector (stage 2) reaches mask AP50 >= 0.5 on the same images.

Reduced for a CPU test: 128 px images, 20 queries in one group, 8 training images that are also
the validation images (the claim is "the whole pipeline can fit data", not generalisation).
An untrained model scores ~0 on the same evaluation.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torchvision.ops import box_iou

from rfdetr.config import RunConfig, TrainConfig, model_config
from rfdetr.datasets import make_synthetic_coco
from rfdetr.datasets.coco import dataset_classes
from rfdetr.models import build_detector
from rfdetr.training.stages import start_run
from rfdetr.training.trainer import Trainer

pytestmark = pytest.mark.slow  # trains stage 1 for EPOCHS epochs, then stage 2

EPOCHS = 40
# checkpoint_interval = EPOCHS: no periodic copies (each is a 320 MB write with the optimizer state);
# plots=False: no results.png each epoch (matplotlib takes about a second a plot here, a fifth of an epoch).
QUICK = dict(batch_size=4, grad_accum_steps=1, resolution=128, multi_scale=False, num_workers=0, use_ema=False,
             run_test=False, tensorboard=False, progress="none", device="cpu", early_stopping=False,
             checkpoint_interval=EPOCHS, lr_scheduler="cosine", plots=False)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    data = make_synthetic_coco(root / "data", seed=0, num_train=8, num_valid=1, num_test=0, image_size=(128, 128),
                               classes=("square", "circle"), max_objects=2)
    shutil.rmtree(data / "valid")
    shutil.copytree(data / "train", data / "valid")
    classes = dataset_classes(data)
    config = model_config("nano", num_classes=classes.num_rows - 1, num_queries=20, group_detr=1)
    torch.manual_seed(0)
    train = TrainConfig(dataset_dir=str(data), output_dir=str(root / "stage1"), epochs=EPOCHS, lr=1e-3,
                        lr_encoder=1e-3, **QUICK)
    trainer = Trainer(build_detector(config), RunConfig(stage="detector", model=config, train=train), classes)
    untrained = trainer._evaluate(trainer.model, "valid")["metrics"]["bbox"]["ap50"]
    return root, data, untrained, trainer.fit()


def test_random_init_nano_fits_a_synthetic_set(fitted):
    _, _, untrained, result = fitted
    best_ap50 = max(record["valid_bbox_AP50"] for record in result.history)
    assert untrained < 0.05
    assert best_ap50 >= 0.5, [round(r["valid_bbox_AP50"], 3) for r in result.history]


def test_stage2_mask_head_on_the_frozen_detector_learns_masks(fitted):
    from rfdetr import RFDETRNano

    root, data, _, _ = fitted
    stage1 = root / "stage1" / "checkpoint_best_total.pth"
    train = TrainConfig(dataset_dir=str(data), output_dir=str(root / "stage2"), epochs=20, lr=1e-3, **QUICK)
    result = start_run("masks", None, train, weights=stage1).fit()
    segm = [record["valid_segm_AP50"] for record in result.history]
    assert max(segm) >= 0.5, segm
    bbox = {round(record["valid_bbox_AP50"], 6) for record in result.history}
    assert len(bbox) == 1  # the frozen detector's boxes never change
    model = RFDETRNano(pretrain_weights=root / "stage2" / "checkpoint_best_total.pth", device="cpu")
    paths = sorted((data / "valid").glob("*.jpg"))
    detections = model.predict(str(paths[0]), threshold=0.3)
    assert model.masks and detections.mask is not None
    assert detections.mask.shape == (len(detections), 128, 128) and detections.mask.any()
    # Each detection gets its own object's mask, not one foreground mask per image.
    separate_pairs = 0
    for found in model.predict([str(p) for p in paths], threshold=0.3):
        boxes_iou = box_iou(torch.from_numpy(found.xyxy), torch.from_numpy(found.xyxy))
        masks = torch.from_numpy(found.mask).flatten(1).float()
        overlap = masks @ masks.T
        masks_iou = overlap / (masks.sum(1)[:, None] + masks.sum(1)[None] - overlap).clamp(min=1)
        disjoint = boxes_iou == 0
        separate_pairs += int(disjoint.sum())
        assert (masks_iou[disjoint] < 0.2).all(), masks_iou[disjoint]
    assert separate_pairs > 0


def test_bf16_inference_finds_what_fp32_finds(fitted):
    """dtype="bfloat16" on the trained detector: every confident fp32 detection has a bf16 one of the
    same class on the same object (IoU >= 0.9, score within 0.05). Refused on a CPU without bf16."""
    from rfdetr import RFDETRNano
    from rfdetr.util.precision import PrecisionUnavailable, cpu_has_bf16

    root, data, _, _ = fitted
    weights = root / "stage1" / "checkpoint_best_total.pth"
    if not cpu_has_bf16():
        with pytest.raises(PrecisionUnavailable):
            RFDETRNano(pretrain_weights=weights, device="cpu", dtype="bfloat16")
        return
    paths = [str(p) for p in sorted((data / "valid").glob("*.jpg"))]
    full = RFDETRNano(pretrain_weights=weights, device="cpu").predict(paths, threshold=0.5)
    half = RFDETRNano(pretrain_weights=weights, device="cpu", dtype="bfloat16").predict(paths, threshold=0.3)
    compared = 0
    for ours, theirs in zip(full, half):
        iou = box_iou(torch.from_numpy(ours.xyxy), torch.from_numpy(theirs.xyxy))
        for i in range(len(ours)):
            j = int(iou[i].argmax())
            assert iou[i, j] >= 0.9 and theirs.class_id[j] == ours.class_id[i], (i, iou[i])
            assert abs(theirs.confidence[j] - ours.confidence[i]) <= 0.05
            compared += 1
    assert compared >= len(paths)


def test_int8_onnx_finds_what_fp32_finds(fitted, tmp_path):
    """The int8 ONNX model of the trained detector finds each confident fp32 detection: same class,
    IoU >= 0.8 (dynamic activation quantization moves boxes by a pixel or two at 128 px)."""
    from rfdetr import RFDETRNano
    from rfdetr.export import ONNXDetector

    root, data, _, _ = fitted
    model = RFDETRNano(pretrain_weights=root / "stage1" / "checkpoint_best_total.pth", device="cpu")
    runtime = ONNXDetector(model.export(tmp_path, quantize="int8"))
    paths = [str(p) for p in sorted((data / "valid").glob("*.jpg"))]
    compared = 0
    for ours, theirs in zip(model.predict(paths, threshold=0.5), runtime.predict(paths, threshold=0.2)):
        iou = box_iou(torch.from_numpy(ours.xyxy), torch.from_numpy(theirs.xyxy))
        for i in range(len(ours)):
            j = int(iou[i].argmax())
            assert iou[i, j] >= 0.8 and theirs.class_id[j] == ours.class_id[i], (i, iou[i])
            compared += 1
    assert compared >= len(paths)
