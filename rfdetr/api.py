"""User-facing model wrappers: ``RFDETRNano(...).predict(image)``.

A wrapper holds the model (``.model``: the detector, or a ``DETRsegm`` with its mask head), its
:class:`~rfdetr.config.ModelConfig` (``.config``), its :class:`~rfdetr.classes.ClassTable`
(``.classes``) and its device. Sizes are data: the ``RFDETR<Size>`` classes only name a row of
:data:`rfdetr.config.SIZE_PRESETS`. How a checkpoint becomes a model, and which classes it gets,
is :func:`rfdetr.checkpoints.loading.load_model`'s job.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar, Sequence

import torch

from rfdetr.accel import accelerate
from rfdetr.checkpoints.loading import load_model
from rfdetr.checkpoints.upstream import PredictStyle
from rfdetr.config import PRETRAINED_NAMES, ModelConfig
from rfdetr.inference import check_threshold, prepare_batch, to_detections
from rfdetr.models import PostProcess
from rfdetr.models.dense_mask_postprocess import PostProcessDenseMasks
from rfdetr.models.mask_postprocess import PostProcessMasks
from rfdetr.util.device import resolve_device
from rfdetr.util.heap import retained_heap
from rfdetr.util.precision import inference_autocast

logger = logging.getLogger(__name__)

_DEFAULT = object()  # "the size's COCO checkpoint"


class RFDETR:
    """An RF-DETR detector of a given ``size`` with its classes, ready to predict.

    pretrain_weights: a table name (``"rf-detr-nano.pth"``, downloaded if needed), a file path, or
    ``None`` for random weights; default: the size's COCO checkpoint. ``num_classes`` /
    ``class_names``: the classes to have (default: the checkpoint's); ``masks`` / ``mask_head``:
    wrap with a mask head (default: when the checkpoint has one). ``dtype``: ``"float32"`` or
    ``"bfloat16"`` (predict under a bf16 autocast; on CUDA with bf16 and on CPUs with AVX-512 BF16 or
    AMX, an error elsewhere). Other keyword arguments are :class:`~rfdetr.config.ModelConfig` fields
    (unknown ones raise).
    """

    size: ClassVar[str | None] = None

    def __init__(self, size: str | None = None, *, pretrain_weights: Any = _DEFAULT, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, device: str | torch.device | None = None,
                 pretrain_exclude_keys: Sequence[str] = (), masks: bool | None = None, mask_head: str | None = None,
                 dtype: str | torch.dtype = "float32", **config_overrides: Any):
        size = size or self.size
        if size is None and pretrain_weights in (_DEFAULT, None):
            raise ValueError("RFDETR needs a size (RFDETR('nano') or RFDETRNano()), or a checkpoint that records one")
        if "num_classes" in config_overrides or "pretrain_weights" in config_overrides:
            raise ValueError("pass num_classes / pretrain_weights as their own arguments")
        if pretrain_weights is _DEFAULT:
            pretrain_weights = PRETRAINED_NAMES[size]
        # Kept so that train() can fit the heads to a dataset's classes from the same weights.
        self._load_arguments = dict(size=size, pretrain_weights=pretrain_weights, num_classes=num_classes,
                                    class_names=class_names, exclude=list(pretrain_exclude_keys), masks=masks,
                                    mask_head=mask_head, config_overrides=config_overrides)
        self.device = resolve_device(device)
        self.dtype = dtype
        self._autocast = inference_autocast(dtype, self.device)  # refuses a dtype the device lacks, early
        self._load(**self._load_arguments)

    def _load(self, **arguments: Any) -> None:
        loaded = load_model(**arguments, device=self.device, dtype=self.dtype)  # on its CPU speed paths
        self.model, self.classes, self.mask_config = loaded.model, loaded.classes, loaded.mask
        self.config: ModelConfig = loaded.config
        self.masks = loaded.has_masks
        self.style = loaded.style  # how this file's release prepares images and boxes
        self.model.to(self.device).eval()
        self._build_postprocess()

    def _build_postprocess(self) -> None:
        self.postprocess = PostProcess(self.config.num_select, clamp_boxes=self.style.clamp_boxes)
        if self.config.segmentation_head:
            self.postprocess_masks = PostProcessDenseMasks(self.config.num_select, self.style.clamp_boxes)
        else:
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
        :attr:`class_names` (the head row), ``data["class_name"]`` holds the names and
        ``data["category_id"]`` the dataset's (or COCO's) category ids.
        """
        check_threshold(threshold)
        batch, sizes, is_list = prepare_batch(images, self.config.resolution, self.device, self.style.antialias)
        self.model.eval()
        with self._autocast():
            outputs = self.model(batch)
        outputs = {k: v.float() if k in ("pred_logits", "pred_boxes", "pred_masks") else v for k, v in outputs.items()}
        if self.masks:  # masks only for the detections above the threshold
            results = self.postprocess_masks(outputs, sizes, self.classes.class_rows,
                                             score_threshold=threshold, model=self.model)
        else:
            results = self.postprocess(outputs, sizes, class_rows=self.classes.class_rows)
        detections = to_detections(results, threshold, self.classes)
        return detections if is_list else detections[0]

    def predict_video(self, path: str | os.PathLike, threshold: float = 0.5, *, every: int = 1, track: bool = False):
        """Detect objects in a video file, frame by frame; a generator of :class:`rfdetr.video.VideoFrame`.

        Each item has ``index``, ``time`` (seconds), ``image`` (the frame, ``H x W x 3`` uint8 RGB) and
        ``detections`` (as :meth:`predict` returns them; masks for a mask model). Frames are decoded one at
        a time. ``every``: only frames 0, ``every``, 2 ``every``, ... ; ``track``: ByteTrack ids in
        ``detections.tracker_id`` (the tracker belongs to this call, so one model serves many videos and
        threads). A video that cannot be read to its end raises :class:`rfdetr.video.VideoError` naming
        the file, after the frames before the fault::

            for frame in model.predict_video("clip.mp4", threshold=0.4, track=True):
                print(frame.index, frame.time, frame.detections.tracker_id)
        """
        from rfdetr.video import predict_frames

        return predict_frames(self, path, threshold, every=every, track=track)

    def train(self, *, retain_heap: bool = False, **train_kwargs: Any):
        """Fine-tune on a COCO-format dataset; keyword arguments are :class:`~rfdetr.config.TrainConfig` fields.

        The model takes the dataset's classes: every class the loaded checkpoint has keeps its
        trained head rows (matched by name, in the dataset's label order); the heads are rebuilt
        only when some class has no trained row (a WARNING names them). A detector trains as stage
        1; a model with a mask head trains its mask head on the frozen detector (a stage-2
        checkpoint) or everything together (a single-stage one, and a segmentation size's detector with
        its built-in mask head: ``RFDETRSegNano`` ...). Afterwards the wrapper holds the
        best weights of the run and predicts at the resolution it trained at. Returns the
        :class:`~rfdetr.training.trainer.TrainResult`.

        ``retain_heap=True``: on the CPU, glibc's ``malloc`` keeps freed memory for the length of the run
        (faster steps, the peak memory kept between steps; :mod:`rfdetr.util.heap`). It is a
        setting of the whole process, so it is off unless asked; the values found are restored afterwards.
        """
        from rfdetr.config import RunConfig, TrainConfig
        from rfdetr.datasets.coco import dataset_classes
        from rfdetr.training.stages import build_trainer, check_segmentation

        config = TrainConfig(**train_kwargs)
        classes = dataset_classes(config.dataset_dir, "train")
        if self.masks:
            check_segmentation(config.dataset_dir)
        if config.device:
            self.device = resolve_device(config.device)
            self._autocast = inference_autocast(self.dtype, self.device)
        if classes != self.classes:  # a frozen detector must already know every class of the dataset
            frozen = self.mask_config is not None and self.mask_config.frozen_detector
            self._load(**{**self._load_arguments, "class_names": classes, "num_classes": None,
                          "require_trained_heads": frozen})
        trainer = build_trainer(RunConfig(model=self.config, train=config, mask=self.mask_config), self.model,
                                self.classes)
        with retained_heap(retain_heap and trainer.device.type == "cpu"):
            result = trainer.fit()
        if result.best_weights is not None:
            self.model.load_state_dict(result.best_weights)
        self.config = trainer.model_config
        # The weights are this package's now: predict prepares images and boxes its own way.
        self.style = PredictStyle()
        self._build_postprocess()
        accelerate(self.model.to(self.device).eval(), self.device, self.dtype)
        return result

    def export(self, output_dir: str | os.PathLike = "output", *, batch_size: int = 1, opset: int = 17,
               verify: bool = True, quantize: str | None = None):
        """Write ``<output_dir>/inference_model.onnx`` (inputs ``images``; outputs ``boxes``, ``logits``,
        and ``masks``, ``mask_queries`` for a model with a mask head).

        With ``verify`` the exported model is run with ONNX Runtime on a real photo and compared with
        PyTorch (max |logit difference| <= 1e-4). ``quantize="int8"`` also writes
        ``inference_model_int8.onnx`` (int8 MatMul/Gemm weights, dynamic activation quantization) and
        returns that path; :class:`~rfdetr.export.ONNXDetector` runs either file. Returns the path.
        """
        from rfdetr.export import export_onnx

        return export_onnx(self.model, self.config, self.classes, output_dir, batch_size=batch_size, opset=opset,
                           verify=verify, quantize=quantize, style=self.style)


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


class RFDETRSegPreview(RFDETR):
    """Upstream 1.11's segmentation models: a detector with a built-in mask head (see :mod:`rfdetr.models.seg_head`)."""

    size = "seg-preview"


class RFDETRSegNano(RFDETR):
    size = "seg-nano"


class RFDETRSegSmall(RFDETR):
    size = "seg-small"


class RFDETRSegMedium(RFDETR):
    size = "seg-medium"


class RFDETRSegLarge(RFDETR):
    size = "seg-large"


class RFDETRSegXLarge(RFDETR):
    size = "seg-xlarge"


class RFDETRSeg2XLarge(RFDETR):
    size = "seg-2xlarge"
