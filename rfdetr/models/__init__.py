"""Model code: backbone, transformer, detector, matcher, criterion, post-processing."""

from rfdetr.models.criterion import SetCriterion, build_criterion
from rfdetr.models.lwdetr import LWDETR, build_detector
from rfdetr.models.matcher import HungarianMatcher
from rfdetr.models.postprocess import PostProcess

__all__ = ["LWDETR", "HungarianMatcher", "PostProcess", "SetCriterion", "build_criterion", "build_detector"]
