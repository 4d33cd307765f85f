"""COCO datasets, transforms and batching: conventions, consistency of boxes and masks, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from rfdetr.datasets import (
    CocoDetection,
    build_dataset,
    collate_fn,
    decode_segmentation,
    make_synthetic_coco,
    multi_scale_sizes,
    random_scale,
    resize_batch,
    train_scales,
)
from rfdetr.datasets import transforms as T
from rfdetr.datasets.preprocess import IMAGENET_MEAN, IMAGENET_STD
from rfdetr.datasets.synthetic import compressed_rle, uncompressed_rle
from rfdetr.util.box_ops import box_cxcywh_to_xyxy

# pycocotools (numpy 2) warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

HEIGHT, WIDTH = 40, 60
ROBOFLOW_CATEGORIES = [{"id": 0, "name": "proj", "supercategory": "none"},
                       {"id": 1, "name": "cat", "supercategory": "proj"},
                       {"id": 2, "name": "dog", "supercategory": "proj"}]


def write_split(root: Path, annotations=(), *, split: str = "train", images=None, categories=None) -> Path:
    """A split folder with black PNG images and the given annotation JSON content."""
    split_dir = root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    images = images if images is not None else [{"id": 1, "file_name": "a.png", "height": HEIGHT, "width": WIDTH}]
    for image in images:
        Image.new("RGB", (image["width"], image["height"])).save(split_dir / image["file_name"])
    data = {"images": images, "annotations": list(annotations),
            "categories": categories if categories is not None else ROBOFLOW_CATEGORIES}
    (split_dir / "_annotations.coco.json").write_text(json.dumps(data))
    return split_dir


def annotation(ann_id: int, bbox, category_id: int = 1, image_id: int = 1, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def rectangle_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """xyxy (pixel edges) of each ``[N, H, W]`` mask."""
    boxes = []
    for mask in masks.bool():
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


# ---- loading, class convention, filtering ---------------------------------------------------------
def test_target_contents_and_roboflow_labels(tmp_path):
    split_dir = write_split(tmp_path, [annotation(0, [5, 6, 10, 8], category_id=2, area=80),
                                       annotation(1, [50, 30, 20, 20], category_id=1)])
    image, target = CocoDetection(split_dir)[0]
    assert image.size == (WIDTH, HEIGHT)
    assert target["boxes"].tolist() == [[5, 6, 15, 14], [50, 30, 60, 40]]  # second clamped to the image
    assert target["labels"].tolist() == [1, 0]  # id 0 is the project, not a class
    assert target["labels"].dtype == torch.int64
    assert int(target["image_id"]) == 1
    assert target["orig_size"].tolist() == target["size"].tolist() == [HEIGHT, WIDTH]
    assert target["area"].tolist() == [80.0, 0.0]
    assert target["iscrowd"].tolist() == [0, 0]
    assert "masks" not in target


def test_category_id_gaps_map_to_contiguous_labels(tmp_path):
    categories = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}, {"id": 42, "name": "c"}]
    split_dir = write_split(tmp_path, [annotation(i, [1, 1, 5, 5], category_id=c) for i, c in
                                       enumerate((42, 3, 7), start=1)], categories=categories)
    dataset = CocoDetection(split_dir)
    assert dataset[0][1]["labels"].tolist() == [2, 0, 1]
    assert dataset.classes.names == ["a", "b", "c"]
    assert [dataset.classes.category_id_of(label) for label in range(3)] == [3, 7, 42]


def test_crowd_degenerate_and_invalid_boxes_are_dropped(tmp_path, caplog):
    split_dir = write_split(tmp_path, [
        annotation(1, [1, 1, 5, 5]),
        annotation(2, [1, 1, 5, 5], iscrowd=1),
        annotation(3, [3, 3, 0, 5]),  # zero width
        annotation(4, [70, 5, 5, 5]),  # outside the image: empty after clamping
        annotation(5, [1, 1, float("nan"), 5]),
        annotation(6, [1, 1, -3, 5]),
        annotation(7, [1, 1, 5]),
    ])
    with caplog.at_level(logging.WARNING):
        dataset = CocoDetection(split_dir, masks=True)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 3  # NaN, negative and malformed bboxes
    assert "annotation id 5" in warnings[0] and str(split_dir) in warnings[0]
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[1, 1, 6, 6]]
    assert target["masks"].shape == (1, HEIGHT, WIDTH) and target["masks"].sum() == 0  # no segmentation
    assert len(dataset.coco.getAnnIds()) == 4  # crowd and degenerate boxes stay for COCOeval


def test_empty_images_are_kept(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": HEIGHT, "width": WIDTH},
              {"id": 2, "file_name": "b.png", "height": 20, "width": 30}]
    dataset = CocoDetection(write_split(tmp_path, [annotation(1, [1, 1, 5, 5])], images=images), masks=True)
    assert len(dataset) == 2
    _, target = dataset[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 20, 30) and target["masks"].dtype == torch.uint8


def test_val_is_an_alias_of_valid(tmp_path):
    write_split(tmp_path, split="valid")
    dataset = build_dataset(tmp_path, "val", resolution=64)
    assert dataset.split_dir == tmp_path / "valid"


def test_coco_object_renumbers_annotation_id_zero(tmp_path, capsys):
    dataset = CocoDetection(write_split(tmp_path, [annotation(0, [1, 1, 5, 5]), annotation(1, [2, 2, 5, 5])]))
    coco = dataset.coco
    assert sorted(coco.getAnnIds()) == [1, 2]
    assert coco.loadAnns(coco.getAnnIds())[0]["iscrowd"] == 0
    assert sorted(coco.getCatIds()) == [0, 1, 2]
    assert capsys.readouterr().out == ""


# ---- masks --------------------------------------------------------------------------------------
def test_every_segmentation_encoding_decodes(tmp_path):
    rectangle = rectangle_mask(10, 5, 30, 25)
    split_dir = write_split(tmp_path, [
        annotation(1, [10, 5, 20, 20], segmentation=[[10, 5, 30, 5, 30, 25, 10, 25]]),
        annotation(2, [10, 5, 20, 20], segmentation=compressed_rle(rectangle)),
        annotation(3, [10, 5, 20, 20], segmentation=uncompressed_rle(rectangle)),
        annotation(4, [10, 5, 20, 20], segmentation=[[1, 2, 3, 4]]),  # 2 points: no area
    ])
    target = CocoDetection(split_dir, masks=True)[0][1]
    masks = target["masks"].numpy()
    for mask in masks[:3]:
        assert np.array_equal(mask, rectangle)
    assert masks[3].sum() == 0 and target["has_mask"].tolist() == [True, True, True, False]  # box-only


def test_masks_are_decoded_only_when_requested(tmp_path, monkeypatch):
    calls = []
    original = coco_mask.decode
    monkeypatch.setattr(coco_mask, "decode", lambda rle: calls.append(1) or original(rle))
    split_dir = write_split(tmp_path, [annotation(1, [10, 5, 20, 20],
                                                  segmentation=compressed_rle(rectangle_mask(10, 5, 30, 25)))])
    CocoDetection(split_dir, masks=False)[0]
    dataset = CocoDetection(split_dir, masks=True)
    assert calls == []  # nothing is decoded while building the dataset either
    dataset[0]
    assert calls == [1]


def test_bad_segmentations_name_the_annotation(tmp_path):
    with pytest.raises(ValueError, match="annotation id 9: RLE size"):
        decode_segmentation(compressed_rle(np.zeros((5, 5), np.uint8)), HEIGHT, WIDTH, where="annotation id 9")
    with pytest.raises(ValueError, match=r"RLE without a \[height, width\] size"):
        decode_segmentation({"points": []}, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match="neither polygons nor RLE"):
        decode_segmentation("polygon", HEIGHT, WIDTH)


# ---- bad input ----------------------------------------------------------------------------------
def test_missing_split_and_annotation_file(tmp_path):
    write_split(tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match=r"split folder .*test.*found folders: \['train'\]"):
        build_dataset(tmp_path, "test", resolution=64)
    with pytest.raises(FileNotFoundError, match="dataset folder"):
        build_dataset(tmp_path / "nowhere", "train", resolution=64)
    (tmp_path / "train" / "_annotations.coco.json").unlink()
    with pytest.raises(FileNotFoundError, match="_annotations.coco.json does not exist"):
        build_dataset(tmp_path, "train", resolution=64)


def test_broken_json_names_the_file(tmp_path):
    split_dir = write_split(tmp_path)
    (split_dir / "_annotations.coco.json").write_text('{"images": [')
    with pytest.raises(ValueError, match=r"_annotations.coco.json is not valid JSON"):
        CocoDetection(split_dir)
    (split_dir / "_annotations.coco.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="'categories'"):
        CocoDetection(split_dir)


def test_unknown_ids_name_the_annotation(tmp_path):
    with pytest.raises(ValueError, match="annotation id 5 refers to unknown image_id 99"):
        CocoDetection(write_split(tmp_path / "a", [annotation(5, [1, 1, 2, 2], image_id=99)]))
    with pytest.raises(ValueError, match=r"annotation id 6 \(image_id 1\) has category_id 8"):
        CocoDetection(write_split(tmp_path / "b", [annotation(6, [1, 1, 2, 2], category_id=8)]))
    with pytest.raises(ValueError, match="category_id 0, which is not a class"):
        CocoDetection(write_split(tmp_path / "c", [annotation(7, [1, 1, 2, 2], category_id=0)]))


def test_missing_and_unreadable_images(tmp_path):
    split_dir = write_split(tmp_path)
    data = json.loads((split_dir / "_annotations.coco.json").read_text())
    data["images"].append({"id": 2, "file_name": "gone.jpg", "height": 4, "width": 4})
    (split_dir / "_annotations.coco.json").write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match=r"gone.jpg \(id 2\)"):
        CocoDetection(split_dir)
    Image.new("RGB", (64, 64), "red").save(split_dir / "gone.jpg")
    (split_dir / "gone.jpg").write_bytes((split_dir / "gone.jpg").read_bytes()[:300])  # truncated
    dataset = CocoDetection(split_dir)
    with pytest.raises(ValueError, match=r"cannot read image file .*gone.jpg \(image id 2"):
        dataset[1]
    (split_dir / "gone.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="gone.jpg"):
        dataset[1]


# ---- transforms ---------------------------------------------------------------------------------
def _masked_target() -> tuple[Image.Image, dict]:
    """An image with rectangle and ellipse instances whose boxes are their masks' boxes."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    ellipse = (((xs - 40) / 12.0) ** 2 + ((ys - 22) / 9.0) ** 2 <= 1).astype(np.uint8)
    masks = torch.from_numpy(np.stack([rectangle_mask(3, 4, 21, 30), ellipse, rectangle_mask(45, 30, 58, 39)]))
    image = Image.fromarray((np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8))
    boxes = mask_boxes(masks)
    target = {"boxes": boxes, "labels": torch.tensor([0, 1, 2]), "masks": masks,
              "area": masks.flatten(1).sum(1).float(), "iscrowd": torch.zeros(3, dtype=torch.int64),
              "size": torch.tensor([HEIGHT, WIDTH])}
    return image, target


def _assert_consistent(target: dict, tolerance: float = 2.0) -> None:
    assert target["boxes"].shape[0] == target["masks"].shape[0] == target["labels"].shape[0]
    assert torch.allclose(mask_boxes(target["masks"]), target["boxes"], atol=tolerance)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_flip_resize_crop_keep_boxes_and_masks_consistent(as_tensor):
    image, target = _masked_target()
    if as_tensor:
        image = T.ToTensor()(image, target)[0]
    flipped_image, flipped = T.hflip(image, target)
    _assert_consistent(flipped, tolerance=0)
    assert torch.equal(T.hflip(flipped_image, flipped)[1]["boxes"], target["boxes"])
    for width, height in ((120, 80), (32, 32), (97, 61)):
        resized_image, resized = T.resize(image, target, width, height)
        assert T.image_size(resized_image) == (width, height)
        assert resized["size"].tolist() == [height, width]
        _assert_consistent(resized)
    cropped_image, cropped = T.crop(image, target, 10, 15, 25, 20)  # cuts the rectangle, drops the third
    assert T.image_size(cropped_image) == (20, 25)
    assert cropped["labels"].tolist() == [0, 1]
    assert cropped["boxes"][0].tolist() == [0, 0, 6, 20]
    assert torch.equal(mask_boxes(cropped["masks"])[0], cropped["boxes"][0])
    unmasked = dict(target, masks=torch.cat([target["masks"][:2], torch.zeros_like(target["masks"][2:])]),
                    has_mask=torch.tensor([True, True, False]))
    kept = T.crop(image, unmasked, 20, 30, 20, 30)[1]
    assert kept["labels"].tolist() == [1, 2]  # no mask: box decides
    assert kept["has_mask"].tolist() == [True, False]  # follows its instances


def test_random_pipeline_keeps_boxes_and_masks_consistent():
    generator = torch.Generator().manual_seed(0)
    pipeline = T.train_transforms([96, 128], generator)
    for _ in range(6):
        image, target = pipeline(*_masked_target())
        side = image.shape[-1]
        assert image.shape == (3, side, side) and side in (96, 128)
        assert target["masks"].shape[-2:] == (side, side)
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
        pixels = box_cxcywh_to_xyxy(target["boxes"]) * side
        fitted = mask_boxes(target["masks"])
        rectangles = target["labels"] != 1  # a cropped ellipse's box is clipped, not re-fitted
        assert torch.allclose(fitted[rectangles], pixels[rectangles], atol=2.0)
        assert (fitted[:, :2] >= pixels[:, :2] - 2).all() and (fitted[:, 2:] <= pixels[:, 2:] + 2).all()


def test_random_transforms_are_seedable():
    def run(seed: int) -> torch.Tensor:
        pipeline = T.train_transforms([64, 96, 128], torch.Generator().manual_seed(seed))
        return torch.cat([pipeline(*_masked_target())[1]["boxes"].flatten() for _ in range(4)])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_random_size_crop_and_resize_ranges():
    image, target = _masked_target()
    resized_image, _ = T.RandomResize([400])(image, target)
    assert T.image_size(resized_image) == (600, 400)
    capped_width, capped_height = T.image_size(T.RandomResize([400], max_size=500)(image, target)[0])
    assert capped_height == 333 and capped_width <= 500
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        width, height = T.image_size(T.RandomSizeCrop(384, 600, generator)(resized_image, target)[0])
        assert 384 <= width <= 600 and 384 <= height <= 400


def test_eval_transform_output(tmp_path):
    write_split(tmp_path, [annotation(1, [15, 10, 30, 20])], split="valid")
    image, target = build_dataset(tmp_path, "valid", resolution=64)[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert target["size"].tolist() == [64, 64] and target["orig_size"].tolist() == [HEIGHT, WIDTH]
    assert torch.allclose(target["boxes"], torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    black = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(image[:, 0, 0], black)


def test_build_dataset_multi_scale_training(tmp_path):
    make_synthetic_coco(tmp_path, num_train=2, num_valid=1, num_test=1, image_size=(64, 64))
    fixed = build_dataset(tmp_path, "train", resolution=64, multi_scale=True, patch_size=16, num_windows=2,
                          masks=True)
    image, target = fixed[0]
    assert image.shape == (3, 192, 192) and target["masks"].shape[-2:] == (192, 192)
    with pytest.raises(ValueError, match="patch_size"):
        build_dataset(tmp_path, "train", resolution=64, multi_scale=True)


# ---- multi-scale sizes ---------------------------------------------------------------------------
def test_multi_scale_sizes():
    assert multi_scale_sizes(384, 16, 2) == list(range(288, 513, 32))
    assert multi_scale_sizes(384, 16, 2, expanded=True) == list(range(224, 545, 32))
    assert multi_scale_sizes(512, 16, 2) == list(range(416, 641, 32))
    assert multi_scale_sizes(576, 16, 2) == list(range(480, 705, 32))
    assert multi_scale_sizes(560, 14, 4) == list(range(392, 785, 56))
    assert multi_scale_sizes(64, 16, 2) == [64, 96, 128, 160, 192]  # sides below 2 blocks dropped
    # Relative to a native resolution: upstream's native set, scaled and rounded to whole blocks.
    assert multi_scale_sizes(384, 16, 2, expanded=True, native_resolution=384) == list(range(224, 545, 32))
    assert multi_scale_sizes(192, 16, 2, expanded=True, native_resolution=384) == [128, 160, 192, 224, 256]
    assert multi_scale_sizes(280, 14, 4, native_resolution=560) == [224, 280, 336, 392]


def test_train_scales():
    options = dict(expanded_scales=False, do_random_resize_via_padding=False)
    assert train_scales(384, 16, 2, multi_scale=False, **options) == [384]
    assert train_scales(384, 16, 2, multi_scale=True, **options) == [512]
    assert train_scales(384, 16, 2, multi_scale=True, expanded_scales=False,
                        do_random_resize_via_padding=True) == list(range(288, 513, 32))


# ---- batching -------------------------------------------------------------------------------------
def test_collate_pads_and_masks():
    targets = [{"labels": torch.tensor([0])}, {"labels": torch.tensor([1, 2])}]
    samples, out_targets = collate_fn([(torch.ones(3, 4, 6), targets[0]), (torch.ones(3, 5, 3), targets[1])])
    assert samples.tensors.shape == (2, 3, 5, 6) and samples.mask.shape == (2, 5, 6)
    assert out_targets == targets
    assert not samples.mask[0, :4, :].any() and samples.mask[0, 4, :].all()
    assert not samples.mask[1, :, :3].any() and samples.mask[1, :, 3:].all()
    assert samples.tensors[0, :, 4].abs().sum() == 0
    with pytest.raises(ValueError, match="empty batch"):
        collate_fn([])


def test_resize_batch_and_random_scale():
    samples, _ = collate_fn([(torch.full((3, 64, 64), 2.0), {}), (torch.full((3, 32, 64), 2.0), {})])
    resized = resize_batch(samples, 32)
    assert resized.tensors.shape == (2, 3, 32, 32) and resized.mask.shape == (2, 32, 32)
    assert torch.allclose(resized.tensors[0], torch.tensor(2.0))
    assert not resized.mask[1, :16].any() and resized.mask[1, 16:].all()
    assert resize_batch(samples, (16, 48)).tensors.shape == (2, 3, 16, 48)
    scales = multi_scale_sizes(384, 16, 2)
    draws = [random_scale(scales, torch.Generator().manual_seed(s)) for s in range(20)]
    assert set(draws) <= set(scales) and len(set(draws)) > 1
    assert draws == [random_scale(scales, torch.Generator().manual_seed(s)) for s in range(20)]
