"""COCO-format datasets, joint image/target transforms, batching and synthetic data."""

from rfdetr.coco_masks import decode_segmentation
from rfdetr.datasets.coco import CocoDetection, build_dataset, resolve_split_dir
from rfdetr.datasets.collate import collate_fn, random_scale, resize_batch
from rfdetr.datasets.transforms import multi_scale_sizes, train_scales

__all__ = [
    "CocoDetection",
    "build_dataset",
    "collate_fn",
    "decode_segmentation",
    "make_synthetic_coco",
    "multi_scale_sizes",
    "random_scale",
    "resize_batch",
    "resolve_split_dir",
    "train_scales",
]


def __getattr__(name: str):
    # Imported on use so that ``python -m rfdetr.datasets.synthetic`` does not import itself twice.
    if name == "make_synthetic_coco":
        from rfdetr.datasets.synthetic import make_synthetic_coco

        return make_synthetic_coco
    raise AttributeError(f"module 'rfdetr.datasets' has no attribute {name!r}")
