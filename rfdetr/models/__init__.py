"""Model code: backbone, transformer, detector, segmentation wrapper, matcher, criterion, post-processing."""

from rfdetr.models.criterion import SetCriterion, build_criterion
from rfdetr.models.lwdetr import LWDETR, build_detector
from rfdetr.models.matcher import HungarianMatcher
from rfdetr.models.postprocess import PostProcess
from rfdetr.models.segmentation import DETRsegm

__all__ = ["DETRsegm", "LWDETR", "HungarianMatcher", "PostProcess", "SetCriterion", "build_criterion", "build_detector"]
