"""Deterministic synthetic COCO datasets of coloured shapes (for tests, demos and smoke training).

``make_synthetic_coco(out_dir, seed=...)`` writes the Roboflow layout
``<out_dir>/{train,valid,test}/_annotations.coco.json`` plus images. Each image has a textured
background (colour gradient, smooth blotches, pixel noise) and 1..``max_objects`` filled shapes
spanning 20-45 % of the image side; later shapes occlude earlier ones, and a placement that would
hide more than half of an earlier shape is retried. Annotations describe the *visible* part: their
mask, bbox (the visible mask's box) and area (its pixel count). Segmentations rotate through the
three COCO encodings: polygon (only for unoccluded shapes, where the polygon is exact), compressed
RLE and uncompressed RLE. Shapes are rasterised by pycocotools from the very polygon that is
written, so decoded masks equal the painted pixels exactly.

Same seed and arguments -> byte-identical JSON and images. Categories follow Roboflow: id 0 is
the project (supercategory ``"none"``), ids 1..K the classes (supercategory = project name).
Annotation ids start at 1 (COCOeval mistreats ground-truth id 0); image ids start at 0.

:func:`make_synthetic_yolo` writes the same scenes (same images) as a YOLO dataset instead: boxes or
polygons of the visible parts, :mod:`rfdetr.datasets.yolo_writer`.

Command line: ``python -m rfdetr.datasets.synthetic OUT_DIR [--seed 0] [--num_train 32] ...
[--format coco|yolo] [--task detect|segment]``
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from rfdetr.datasets import yolo_writer

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
DEFAULT_CLASSES = ("circle", "square", "triangle")
SIZE_RANGE = (0.20, 0.45)  # shape extent as a fraction of the shorter image side
MIN_VISIBLE_FRACTION = 0.5  # an earlier shape must keep at least this much of its area visible
PLACEMENT_TRIES = 30


# ---- shapes: (cx, cy, radius, angle) -> [K, 2] vertices ---------------------------------------
def _regular(sides: int, phase: float = 0.0) -> Callable[[float, float, float, float], np.ndarray]:
    def vertices(cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
        theta = angle + phase + np.arange(sides) * (2 * math.pi / sides)
        return np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)
    return vertices


def _star(cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    theta = angle + np.arange(10) * (math.pi / 5)
    radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)


SHAPES: dict[str, Callable[[float, float, float, float], np.ndarray]] = {
    "circle": _regular(48),
    "square": _regular(4, math.pi / 4),
    "triangle": _regular(3, -math.pi / 2),
    "hexagon": _regular(6),
    "diamond": _regular(4),
    "star": _star,
}


@dataclass(frozen=True)
class SyntheticObject:
    """One drawn shape: class index into the class list, written polygon and masks ``[H, W]`` uint8."""

    class_index: int
    polygon: list[float]
    full_mask: np.ndarray
    visible_mask: np.ndarray

    @property
    def occluded(self) -> bool:
        return bool((self.full_mask != self.visible_mask).any())


@dataclass(frozen=True)
class SyntheticScene:
    image: np.ndarray  # [H, W, 3] uint8 RGB
    objects: list[SyntheticObject]


# ---- drawing -----------------------------------------------------------------------------------
def _rasterize(polygon: list[float], height: int, width: int) -> np.ndarray:
    rles = coco_mask.frPyObjects([polygon], height, width)
    return coco_mask.decode(coco_mask.merge(rles)).astype(np.uint8)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float ``[H, W, 3]``: a two-colour gradient, smooth blotches and pixel noise."""
    start = rng.uniform(30, 225, 3)
    end = np.clip(start + rng.uniform(-60, 60, 3), 0, 255)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = np.clip((xs / width - 0.5) * math.cos(angle) + (ys / height - 0.5) * math.sin(angle) + 0.5, 0, 1)
    image = start + (end - start) * ramp[..., None]
    coarse = rng.uniform(-25, 25, (4, 4, 3)).astype(np.float32)
    blotches = [Image.fromarray(np.ascontiguousarray(coarse[..., c])).resize((width, height), Image.Resampling.BICUBIC)
                for c in range(3)]
    return image + np.stack([np.asarray(b) for b in blotches], axis=-1) + rng.normal(0, 6, (height, width, 3))


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """The candidate colour farthest from the background's mean (out of a few random ones)."""
    candidates = rng.uniform(0, 255, (12, 3))
    distances = np.linalg.norm(candidates - background, axis=1)
    return candidates[int(np.argmax(distances))]


def _place_shape(rng: np.random.Generator, shape: str, height: int, width: int,
                 fulls: list[np.ndarray], visibles: list[np.ndarray]) -> tuple[list[float], np.ndarray] | None:
    """A random placement that leaves every earlier shape mostly visible, or ``None``."""
    side = min(height, width)
    for _ in range(PLACEMENT_TRIES):
        radius = rng.uniform(*SIZE_RANGE) * side / 2
        cx = rng.uniform(radius + 1, width - radius - 1)
        cy = rng.uniform(radius + 1, height - radius - 1)
        vertices = SHAPES[shape](cx, cy, radius, rng.uniform(0, 2 * math.pi))
        polygon = [round(float(v), 2) for v in vertices.reshape(-1)]
        full = _rasterize(polygon, height, width)
        if all((visible & (1 - full)).sum() >= MIN_VISIBLE_FRACTION * earlier.sum()
               for earlier, visible in zip(fulls, visibles)):
            return polygon, full
    return None


def synthetic_scene(seed: int, split: str, index: int, *, image_size: tuple[int, int] = (256, 256),
                    classes: Sequence[str] = DEFAULT_CLASSES, max_objects: int = 4) -> SyntheticScene:
    """Image ``index`` of ``split`` for ``seed`` (independent of how many images the splits have)."""
    _check_classes(classes)
    height, width = image_size
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    image = _background(rng, height, width)
    fulls: list[np.ndarray] = []
    visibles: list[np.ndarray] = []
    class_indices: list[int] = []
    polygons: list[list[float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        class_index = int(rng.integers(len(classes)))
        placed = _place_shape(rng, classes[class_index], height, width, fulls, visibles)
        if placed is None:
            continue
        polygon, full = placed
        visibles = [visible & (1 - full) for visible in visibles]
        fulls.append(full)
        visibles.append(full.copy())
        class_indices.append(class_index)
        polygons.append(polygon)
        region = full.astype(bool)
        colour = _contrasting_colour(rng, image[region].mean(axis=0))
        image[region] = colour + rng.normal(0, 5, (int(region.sum()), 3))
    objects = [SyntheticObject(c, p, f, v) for c, p, f, v in zip(class_indices, polygons, fulls, visibles)]
    return SyntheticScene(np.clip(np.rint(image), 0, 255).astype(np.uint8), objects)


# ---- COCO encoding -----------------------------------------------------------------------------
def uncompressed_rle(mask: np.ndarray) -> dict:
    """``[H, W]`` 0/1 mask -> COCO uncompressed RLE (column-major run lengths, starting with zeros)."""
    flat = mask.reshape(-1, order="F").astype(np.uint8)
    starts = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` of a mask's pixels (pixel-edge convention, as pycocotools' toBbox)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _segmentation(obj: SyntheticObject, annotation_id: int) -> list | dict:
    kind = annotation_id % 3
    if kind == 0 and not obj.occluded:
        return [obj.polygon]
    if kind == 2:
        return uncompressed_rle(obj.visible_mask)
    return compressed_rle(obj.visible_mask)


def _check_classes(classes: Sequence[str]) -> None:
    unknown = [name for name in classes if name not in SHAPES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct shape names from {sorted(SHAPES)}, got {list(classes)}")


def _check_options(classes: Sequence[str], image_format: str, seed: int, max_objects: int,
                   image_size: tuple[int, int]) -> None:
    _check_classes(classes)
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if seed < 0 or max_objects < 1 or min(image_size) < 32:
        raise ValueError(f"need seed >= 0, max_objects >= 1 and sides >= 32 (got {seed}, {max_objects}, {image_size})")


def _write_scenes(folder: Path, split: str, count: int, seed: int, image_format: str, **scene_options):
    """Write the ``count`` images of ``split`` into ``folder``; yields ``(index, file name, scene)``."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scene = synthetic_scene(seed, split, index, **scene_options)
        file_name = f"{split}_{index:05d}.{image_format}"
        save_options = {"quality": 92} if image_format == "jpg" else {}
        Image.fromarray(scene.image).save(folder / file_name, **save_options)
        yield index, file_name, scene


def make_synthetic_coco(out_dir: str | Path, *, seed: int = 0, num_train: int = 32, num_valid: int = 8,
                        num_test: int = 8, image_size: tuple[int, int] = (256, 256),
                        classes: Sequence[str] = DEFAULT_CLASSES, max_objects: int = 4,
                        image_format: str = "jpg", project: str = "shapes") -> Path:
    """Write the three splits under ``out_dir`` and return it (see the module docstring)."""
    _check_options(classes, image_format, seed, max_objects, image_size)
    out_dir = Path(out_dir)
    height, width = image_size
    categories = [{"id": 0, "name": project, "supercategory": "none"}]
    categories += [{"id": i + 1, "name": name, "supercategory": project} for i, name in enumerate(classes)]
    for split, count in zip(SPLITS, (num_train, num_valid, num_test)):
        split_dir = out_dir / split
        images, annotations = [], []
        for index, file_name, scene in _write_scenes(split_dir, split, count, seed, image_format,
                                                     image_size=image_size, classes=classes, max_objects=max_objects):
            images.append({"id": index, "license": 1, "file_name": file_name, "height": height, "width": width})
            for obj in scene.objects:
                annotation_id = len(annotations) + 1
                annotations.append({
                    "id": annotation_id, "image_id": index, "category_id": obj.class_index + 1,
                    "bbox": mask_bbox(obj.visible_mask), "area": float(obj.visible_mask.sum()),
                    "segmentation": _segmentation(obj, annotation_id), "iscrowd": 0,
                })
        data = {"info": {"description": f"synthetic shapes (seed {seed})", "version": "1"},
                "licenses": [{"id": 1, "name": "CC0 1.0"}],
                "categories": categories, "images": images, "annotations": annotations}
        (split_dir / "_annotations.coco.json").write_text(json.dumps(data), encoding="utf-8")
        logger.info("wrote %s: %d images, %d annotations", split_dir, len(images), len(annotations))
    return out_dir


def make_synthetic_yolo(out_dir: str | Path, *, seed: int = 0, num_train: int = 32, num_valid: int = 8,
                        num_test: int = 8, image_size: tuple[int, int] = (256, 256),
                        classes: Sequence[str] = DEFAULT_CLASSES, max_objects: int = 4,
                        image_format: str = "jpg", task: str = "detect") -> Path:
    """The scenes of :func:`make_synthetic_coco` (same arguments, same images) as a YOLO dataset:
    boxes (``task="detect"``) or polygons (``"segment"``), see :mod:`rfdetr.datasets.yolo_writer`."""
    _check_options(classes, image_format, seed, max_objects, image_size)
    if task not in yolo_writer.TASKS:
        raise ValueError(f"task must be one of {yolo_writer.TASKS}, got {task!r}")
    out_dir = Path(out_dir)
    height, width = image_size
    splits = [(split, count) for split, count in zip(SPLITS, (num_train, num_valid, num_test)) if count > 0]
    for split, count in splits:  # a split without images is left out of the data.yaml
        labels = out_dir / "labels" / yolo_writer.FOLDERS[split]
        labels.mkdir(parents=True, exist_ok=True)
        for _, file_name, scene in _write_scenes(out_dir / "images" / yolo_writer.FOLDERS[split], split, count, seed,
                                                 image_format, image_size=image_size, classes=classes,
                                                 max_objects=max_objects):
            lines = yolo_writer.label_lines(scene.objects, height, width, task, mask_bbox)
            (labels / Path(file_name).with_suffix(".txt")).write_text("".join(f"{line}\n" for line in lines))
        logger.info("wrote %s: %d images (%s labels)", labels, count, task)
    yolo_writer.write_data_yaml(out_dir, classes, [split for split, _ in splits])
    return out_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a deterministic synthetic dataset of shapes (COCO or YOLO).")
    parser.add_argument("out_dir", type=Path, help="output folder (gets train/, valid/, test/)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical files")
    parser.add_argument("--num_train", "--num-train", type=int, default=32, help="training images")
    parser.add_argument("--num_valid", "--num-valid", type=int, default=8, help="validation images")
    parser.add_argument("--num_test", "--num-test", type=int, default=8, help="test images")
    parser.add_argument("--image_size", "--image-size", type=int, nargs=2, default=(256, 256),
                        metavar=("H", "W"), help="image height and width")
    parser.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES),
                        help=f"shape classes, from {sorted(SHAPES)}")
    parser.add_argument("--max_objects", "--max-objects", type=int, default=4, help="most shapes per image")
    parser.add_argument("--format", choices=("coco", "yolo", "jpg", "png"), default="coco",
                        help="dataset format: coco (Roboflow layout) or yolo (data.yaml, images/, labels/); "
                             "jpg or png here set the image format (as --image_format does)")
    parser.add_argument("--image_format", "--image-format", choices=("jpg", "png"), default=None,
                        help="image file format (default jpg)")
    parser.add_argument("--task", choices=yolo_writer.TASKS, default="detect",
                        help="YOLO labels: detect = boxes, segment = polygons (masks for stage 2)")
    parser.add_argument("--project", default="shapes", help="Roboflow-style project (id-0 category) name of COCO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    image_format = args.image_format or (args.format if args.format in ("jpg", "png") else "jpg")
    common = dict(seed=args.seed, num_train=args.num_train, num_valid=args.num_valid, num_test=args.num_test,
                  image_size=tuple(args.image_size), classes=args.classes, max_objects=args.max_objects,
                  image_format=image_format)
    if args.format == "yolo":
        make_synthetic_yolo(args.out_dir, task=args.task, **common)
    else:
        make_synthetic_coco(args.out_dir, project=args.project, **common)


if __name__ == "__main__":
    main()
