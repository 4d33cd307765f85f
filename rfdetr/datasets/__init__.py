"""Datasets: COCO-format and YOLO-format folders, joint image/target transforms, batching and synthetic data.

Names are imported on use: ``validate_setup.py`` reads YOLO folders through :mod:`rfdetr.datasets.yolo`
without importing torch, and ``python -m rfdetr.datasets.synthetic`` does not import itself twice.
"""

from importlib import import_module

_EXPORTS = {
    "CocoDetection": "rfdetr.datasets.coco",
    "build_dataset": "rfdetr.datasets.coco",
    "resolve_split_dir": "rfdetr.datasets.splits",
    "load_split": "rfdetr.datasets.splits",
    "dataset_classes": "rfdetr.datasets.splits",
    "collate_fn": "rfdetr.datasets.collate",
    "random_scale": "rfdetr.datasets.collate",
    "resize_batch": "rfdetr.datasets.collate",
    "multi_scale_sizes": "rfdetr.datasets.transforms",
    "train_scales": "rfdetr.datasets.transforms",
    "decode_segmentation": "rfdetr.datasets.coco_masks",
    "make_synthetic_coco": "rfdetr.datasets.synthetic",
    "make_synthetic_yolo": "rfdetr.datasets.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rfdetr.datasets' has no attribute {name!r}")
