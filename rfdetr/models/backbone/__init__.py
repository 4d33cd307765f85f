"""Backbone: windowed DINOv2 encoder + multi-scale projector, joined with the position encoding."""

from rfdetr.models.backbone.backbone import Backbone, Joiner, build_backbone

__all__ = ["Backbone", "Joiner", "build_backbone"]
