"""Model code: backbone, transformer, detector, post-processing."""

from rfdetr.models.lwdetr import LWDETR, build_detector
from rfdetr.models.postprocess import PostProcess

__all__ = ["LWDETR", "PostProcess", "build_detector"]
