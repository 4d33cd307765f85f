"""User-facing model wrappers: ``RFDETRNano(...).predict(image)``.

A wrapper holds the detector (``.model``), its :class:`~rfdetr.config.ModelConfig` (``.config``),
its :class:`~rfdetr.classes.ClassTable` (``.classes``) and its device. Sizes are data: the
``RFDETR<Size>`` classes only name a row of :data:`rfdetr.config.SIZE_PRESETS`.

Which classes a model has is decided once, here:
``class_names`` given -> those names (heads rebuilt unless the checkpoint has the same classes);
``num_classes`` given -> that many classes (the checkpoint's names if its head has that size);
otherwise -> the checkpoint's classes (the COCO table for the published checkpoints).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from rfdetr.checkpoint import (CLASS_HEAD_PATTERNS, CheckpointError, checkpoint_class_table, checkpoint_size,
                               load_state_dict, read_checkpoint)
from rfdetr.classes import ClassTable
from rfdetr.config import PRETRAINED_NAMES, ModelConfig, model_config
from rfdetr.inference import check_threshold, prepare_batch, to_detections
from rfdetr.models import DETRsegm, PostProcess, build_detector
from rfdetr.models.mask_postprocess import PostProcessMasks
from rfdetr.training.segmentation import default_mask_head, detector_state

logger = logging.getLogger(__name__)

_DEFAULT = object()  # "the size's COCO checkpoint"


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class RFDETR:
    """An RF-DETR detector of a given ``size`` with its classes, ready to predict.

    pretrain_weights: a table name (``"rf-detr-nano.pth"``, downloaded if needed), a file path, or
    ``None`` for random weights; default: the size's COCO checkpoint. Other keyword arguments are
    :class:`~rfdetr.config.ModelConfig` fields (unknown ones raise).
    """

    size: ClassVar[str | None] = None

    def __init__(self, size: str | None = None, *, pretrain_weights: Any = _DEFAULT, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, device: str | torch.device | None = None,
                 pretrain_exclude_keys: Sequence[str] = (), masks: bool | None = None, mask_head: str | None = None,
                 **config_overrides: Any):
        size = size or self.size
        # Remembered so that train() can rebuild the heads for a dataset's classes from the same weights.
        self._init_arguments = dict(size=size, pretrain_weights=pretrain_weights, device=device,
                                    pretrain_exclude_keys=list(pretrain_exclude_keys), **config_overrides)
        if size is None:
            raise ValueError("RFDETR needs a size: RFDETR('nano') or RFDETRNano()")
        if "num_classes" in config_overrides or "pretrain_weights" in config_overrides:
            raise ValueError("pass num_classes / pretrain_weights as their own arguments")
        if pretrain_weights is _DEFAULT:
            pretrain_weights = PRETRAINED_NAMES[size]
        checkpoint = _read_weights(pretrain_weights) if pretrain_weights is not None else None
        if checkpoint is not None:
            found = checkpoint_size(checkpoint)
            if found is not None and found != size:
                raise CheckpointError(f"{pretrain_weights} is a {found} checkpoint but this is a {size} model; "
                                      f"use RFDETR{found.capitalize()} (or pass the {size} checkpoint)")
        stored = checkpoint_class_table(checkpoint) if checkpoint is not None else None
        self.classes, keep_heads = _choose_classes(stored, num_classes, class_names)
        # Our checkpoints carry their model config: its geometry is the default, explicit keywords win.
        saved = {k: v for k, v in (checkpoint or {}).get("config", {}).items()
                 if k not in ("size", "num_classes", "pretrain_weights")}
        self.config: ModelConfig = model_config(size, num_classes=self.classes.num_rows - 1,
                                                pretrain_weights=None if pretrain_weights is None
                                                else os.fspath(pretrain_weights), **{**saved, **config_overrides})
        detector = build_detector(self.config)
        if checkpoint is not None:
            exclude = list(pretrain_exclude_keys) + ([] if keep_heads else list(CLASS_HEAD_PATTERNS))
            load_state_dict(detector, detector_state(checkpoint["model"]), exclude=exclude,
                            source=str(pretrain_weights), size=checkpoint_size(checkpoint))
        stored_masks = (checkpoint or {}).get("masks") or {}
        self.masks = bool(stored_masks) if masks is None else masks
        self.model = detector
        if self.masks:  # a detector wrapped with its mask head (a stage-2 / single-stage checkpoint)
            head = mask_head or stored_masks.get("mask_head") or default_mask_head(size)
            self.model = DETRsegm(detector, freeze_detr=True, mask_head=head)
            _load_mask_head(self.model, checkpoint, pretrain_weights)
        self.device = torch.device(device) if device is not None else default_device()
        self.model.to(self.device).eval()
        self.postprocess = PostProcess(self.config.num_select)
        self.postprocess_masks = PostProcessMasks(self.config.num_select, max_masks=None)

    @property
    def class_names(self) -> dict[int, str]:
        """``{class_id: name}`` for the ``class_id`` values that :meth:`predict` returns."""
        return {entry.label: entry.name for entry in self.classes.entries}

    @torch.inference_mode()
    def predict(self, images: Any, threshold: float = 0.5):
        """Detect objects; returns ``supervision.Detections`` (a list of them for a list input).

        ``images``: a path, PIL image, H x W x 3 array, [3, H, W] tensor in [0, 1], or a list of
        them (one batched forward). ``xyxy`` is in original pixels, ``class_id`` indexes
        :attr:`class_names`, ``data["class_name"]`` holds the names.
        """
        check_threshold(threshold)
        batch, sizes, is_list = prepare_batch(images, self.config.resolution, self.device)
        self.model.eval()
        outputs = self.model(batch)
        if self.masks:  # masks only for the detections above the threshold
            results = self.postprocess_masks(outputs, sizes, self.model, self.classes.class_rows,
                                             score_threshold=threshold)
        else:
            results = self.postprocess(outputs, sizes, class_rows=self.classes.class_rows)
        detections = to_detections(results, threshold, self.class_names)
        return detections if is_list else detections[0]

    def train(self, **train_kwargs: Any):
        """Fine-tune on a COCO-format dataset; keyword arguments are :class:`~rfdetr.config.TrainConfig` fields.

        The class heads are rebuilt for the dataset's classes (everything else keeps the loaded
        weights); afterwards the wrapper holds the best weights of the run. Returns the
        :class:`~rfdetr.training.trainer.TrainResult`.
        """
        from rfdetr.config import TrainConfig
        from rfdetr.datasets.coco import dataset_classes
        from rfdetr.training.trainer import Trainer

        config = TrainConfig(**train_kwargs)
        classes = dataset_classes(config.dataset_dir, "train")
        if classes != self.classes:
            arguments = dict(self._init_arguments)
            if config.device:
                arguments["device"] = config.device
            self.__init__(class_names=classes, **arguments)
        result = Trainer(self.model, self.config, self.classes, config).fit()
        best = Path(config.output_dir) / "checkpoint_best_total.pth"
        if best.is_file():
            self.model.load_state_dict(read_checkpoint(best)["model"])
        self.model.eval()
        return result

    def export(self, output_dir: str | os.PathLike = "output", *, batch_size: int = 1, opset: int = 17,
               verify: bool = True):
        """Write ``<output_dir>/inference_model.onnx`` (inputs ``images``; outputs ``boxes``, ``logits``,
        and ``masks``, ``mask_queries`` for a model with a mask head).

        With ``verify`` the exported model is run with ONNX Runtime on a real photo and compared with
        PyTorch (max |logit difference| <= 1e-4). Returns the path.
        """
        from rfdetr.export import export_onnx

        return export_onnx(self.model, self.config, self.classes, output_dir, batch_size=batch_size, opset=opset,
                           verify=verify)


def _load_mask_head(model: DETRsegm, checkpoint: dict | None, source: Any) -> None:
    """The mask-head tensors of ``checkpoint`` into ``model`` (all of them, or none: a new head)."""
    state = {k: v for k, v in (checkpoint or {}).get("model", {}).items() if not k.startswith("detr.")}
    if not state:
        logger.warning("%s has no mask head: the mask head is randomly initialised (train it with "
                       "train_seg_stage2.py)", source if checkpoint is not None else "no checkpoint")
        return
    result = model.load_state_dict({f"detr.{k}": v for k, v in model.detr.state_dict().items()} | state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{source}: the mask head does not match (missing {result.missing_keys[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}); pass mask_head= as it was trained")


def _read_weights(pretrain_weights: str | os.PathLike) -> dict:
    from rfdetr.weights import resolve_weights

    return read_checkpoint(resolve_weights(pretrain_weights))


def _choose_classes(stored: ClassTable | None, num_classes: int | None,
                    class_names: Sequence[str] | ClassTable | None) -> tuple[ClassTable, bool]:
    """The model's class table and whether the checkpoint's class heads can be kept."""
    if isinstance(class_names, ClassTable):  # a dataset's table (category ids included)
        if num_classes is not None and num_classes != class_names.num_rows - 1:
            raise ValueError(f"num_classes={num_classes} does not match the class table ({class_names.describe()})")
        return class_names, stored == class_names
    if class_names is not None:
        table = ClassTable.from_names(class_names)
        if num_classes is not None and num_classes != len(table.entries):
            raise ValueError(f"num_classes={num_classes} but {len(table.entries)} class_names were given")
        if stored is not None and stored.names == table.names:
            return stored, True
        generic = stored is not None and all(n == f"class_{i}" for i, n in enumerate(stored.names))
        return table, generic and stored.num_rows == table.num_rows
    if num_classes is not None:
        if stored is not None and stored.num_rows == num_classes + 1:
            return stored, True
        return ClassTable.from_names([f"class_{i}" for i in range(num_classes)]), False
    if stored is not None:
        return stored, True
    return ClassTable.coco(), True


class RFDETRNano(RFDETR):
    size = "nano"


class RFDETRSmall(RFDETR):
    size = "small"


class RFDETRMedium(RFDETR):
    size = "medium"


class RFDETRBase(RFDETR):
    size = "base"


class RFDETRLarge(RFDETR):
    size = "large"
