"""Model code: backbone, transformer, detector, segmentation wrapper, matcher, criterion, post-processing."""

from rfdetr.models.criterion import SetCriterion, build_criterion
from rfdetr.models.lwdetr import LWDETR, build_detector
from rfdetr.models.matcher import HungarianMatcher
from rfdetr.models.postprocess import PostProcess
from rfdetr.models.segmentation import DETRsegm, build_segmentation_model

__all__ = ["DETRsegm", "LWDETR", "HungarianMatcher", "PostProcess", "SetCriterion", "build_criterion", "build_detector",
           "build_segmentation_model"]
