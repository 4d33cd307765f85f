"""The synthetic shapes generator: determinism, exact round trip through the dataset, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from rfdetr.datasets.coco import CocoDetection
from rfdetr.datasets.synthetic import (
    SPLITS,
    compressed_rle,
    main,
    make_synthetic_coco,
    mask_bbox,
    synthetic_scene,
    uncompressed_rle,
)

# pycocotools (numpy 2) warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = (96, 128)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    return make_synthetic_coco(tmp_path_factory.mktemp("synthetic"), seed=3, num_train=12, num_valid=3,
                               num_test=2, image_size=SIZE, image_format="png")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    first = _files(make_synthetic_coco(tmp_path / "a", seed=7, num_train=4, num_valid=2, num_test=1))
    second = _files(make_synthetic_coco(tmp_path / "b", seed=7, num_train=4, num_valid=2, num_test=1))
    other = _files(make_synthetic_coco(tmp_path / "c", seed=8, num_train=4, num_valid=2, num_test=1))
    assert first == second
    assert len(first) == 3 + 4 + 2 + 1
    assert first["train/_annotations.coco.json"] != other["train/_annotations.coco.json"]


def test_split_content_does_not_depend_on_other_split_sizes(tmp_path):
    small = make_synthetic_coco(tmp_path / "a", seed=1, num_train=2, num_valid=1, num_test=1)
    large = make_synthetic_coco(tmp_path / "b", seed=1, num_train=5, num_valid=1, num_test=1)
    assert (small / "valid" / "valid_00000.jpg").read_bytes() == (large / "valid" / "valid_00000.jpg").read_bytes()


def test_roboflow_categories_and_ids(synthetic_dir):
    data = json.loads((synthetic_dir / "train" / "_annotations.coco.json").read_text())
    assert data["categories"][0] == {"id": 0, "name": "shapes", "supercategory": "none"}
    assert [(c["id"], c["name"], c["supercategory"]) for c in data["categories"][1:]] == [
        (1, "circle", "shapes"), (2, "square", "shapes"), (3, "triangle", "shapes")]
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    assert all(1 <= a["category_id"] <= 3 for a in data["annotations"])
    per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=12)
    assert per_image.min() >= 1 and per_image.max() <= 4


def test_all_three_segmentation_encodings_are_written(synthetic_dir):
    kinds = set()
    for split in SPLITS:
        data = json.loads((synthetic_dir / split / "_annotations.coco.json").read_text())
        for annotation in data["annotations"]:
            segmentation = annotation["segmentation"]
            if isinstance(segmentation, list):
                kinds.add("polygon")
            else:
                kinds.add("uncompressed" if isinstance(segmentation["counts"], list) else "compressed")
    assert kinds == {"polygon", "compressed", "uncompressed"}


def test_dataset_masks_equal_drawn_visible_masks(synthetic_dir):
    for split in SPLITS:
        dataset = CocoDetection(synthetic_dir / split, masks=True)
        assert dataset.classes.names == ["circle", "square", "triangle"]
        for index in range(len(dataset)):
            image, target = dataset[index]
            scene = synthetic_scene(3, split, index, image_size=SIZE)
            assert np.array_equal(np.asarray(image), scene.image)  # PNG: lossless
            expected = np.stack([obj.visible_mask for obj in scene.objects])
            assert np.array_equal(target["masks"].numpy(), expected)
            assert target["labels"].tolist() == [obj.class_index for obj in scene.objects]
            for box, area, mask in zip(target["boxes"].tolist(), target["area"].tolist(), expected):
                x, y, w, h = mask_bbox(mask)
                assert box == [x, y, x + w, y + h]
                assert area == mask.sum()


def test_occlusion_is_consistent(synthetic_dir):
    for index in range(12):
        scene = synthetic_scene(3, "train", index, image_size=SIZE)
        covered = np.zeros(SIZE, dtype=np.uint8)
        for obj in reversed(scene.objects):  # later shapes are on top
            assert np.array_equal(obj.visible_mask, obj.full_mask & (1 - covered))
            assert obj.visible_mask.sum() >= 0.5 * obj.full_mask.sum()
            covered |= obj.full_mask
        for obj in scene.objects:  # the shape's visible pixels are painted in one colour (+ noise)
            pixels = scene.image[obj.visible_mask.astype(bool)].astype(np.float32)
            assert np.abs(pixels - np.median(pixels, axis=0)).mean() < 12


def test_rle_helpers_round_trip():
    rng = np.random.default_rng(0)
    for first_pixel in (0, 1):
        mask = (rng.random((7, 9)) > 0.5).astype(np.uint8)
        mask[0, 0] = first_pixel
        uncompressed = uncompressed_rle(mask)
        assert sum(uncompressed["counts"]) == mask.size
        decoded = coco_mask.decode(coco_mask.frPyObjects(uncompressed, 7, 9))
        assert np.array_equal(decoded, mask)
        assert np.array_equal(coco_mask.decode(compressed_rle(mask)), mask)
    assert mask_bbox(np.zeros((4, 4), np.uint8)) == [0.0, 0.0, 0.0, 0.0]


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="hexagon"):
        make_synthetic_coco(tmp_path, classes=("circle", "blob"))
    with pytest.raises(ValueError, match="image_format"):
        make_synthetic_coco(tmp_path, image_format="gif")


def test_command_line(tmp_path):
    main([str(tmp_path), "--seed", "2", "--num_train", "2", "--num_valid", "1", "--num_test", "1",
          "--image_size", "64", "80", "--classes", "star", "hexagon", "--format", "png"])
    data = json.loads((tmp_path / "train" / "_annotations.coco.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["shapes", "star", "hexagon"]
    assert (tmp_path / "test" / "test_00000.png").is_file()
    assert data["images"][0]["height"] == 64 and data["images"][0]["width"] == 80
