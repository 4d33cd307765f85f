"""RT-DETR-Seg: RF-DETR detection and two-stage instance segmentation."""

__version__ = "0.1.0"
