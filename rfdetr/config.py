"""Typed configuration: the one place where model defaults live.

Each RF-DETR size is a row of data in :data:`SIZE_PRESETS` (the native geometry of the published
upstream 1.2.1 checkpoints), not a subclass. :func:`model_config` turns a size name plus keyword
overrides into a validated :class:`ModelConfig`; unknown keywords are an error.

Example::

    cfg = model_config("nano")                   # native: 384 px, 2 decoder layers, P4 only
    cfg = model_config("base", num_classes=3)    # overrides are validated
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, get_args

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

SizeName = Literal["nano", "small", "medium", "base", "large", "seg-preview", "seg-nano", "seg-small", "seg-medium",
                   "seg-large", "seg-xlarge", "seg-2xlarge"]
# The detector sizes (the published RF-DETR COCO detection checkpoints).
SIZES: tuple[str, ...] = ("nano", "small", "medium", "base", "large")
# Upstream 1.11's segmentation models (``RFDETRSegNano`` ...): a detector with a built-in mask head
# (``segmentation_head``), loaded from their files; the two-stage ``DETRsegm`` recipe is the other mask model.
SEG_SIZES: tuple[str, ...] = ("seg-preview", "seg-nano", "seg-small", "seg-medium", "seg-large", "seg-xlarge",
                              "seg-2xlarge")

# Projector level name -> resampling factor of the stride-`patch_size` ViT maps.
LEVEL_SCALE = {"P3": 2.0, "P4": 1.0, "P5": 0.5, "P6": 0.25}

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


class EncoderSpec(BaseModel):
    """Geometry of a DINOv2 ViT encoder (all variants: 12 layers, MLP ratio 4, LayerNorm eps 1e-6)."""

    model_config = ConfigDict(frozen=True)

    width: int
    num_heads: int
    depth: int = 12
    mlp_ratio: int = 4
    layer_norm_eps: float = 1e-6


ENCODERS: dict[str, EncoderSpec] = {
    "dinov2_windowed_small": EncoderSpec(width=384, num_heads=6),
    "dinov2_windowed_base": EncoderSpec(width=768, num_heads=12),
}

# Detections per image that COCO evaluation counts (maxDets 100): the masks kept per image in
# evaluation and in ONNX export.
COCO_MAX_DETECTIONS = 100

# File names of the published COCO checkpoints (the URL table lives in rfdetr.checkpoints.download).
PRETRAINED_NAMES = {
    "nano": "rf-detr-nano.pth",
    "small": "rf-detr-small.pth",
    "medium": "rf-detr-medium.pth",
    "base": "rf-detr-base.pth",
    "large": "rf-detr-large.pth",
    "seg-preview": "rf-detr-seg-preview.pt",
    "seg-nano": "rf-detr-seg-nano.pt",
    "seg-small": "rf-detr-seg-small.pt",
    "seg-medium": "rf-detr-seg-medium.pt",
    "seg-large": "rf-detr-seg-large.pt",
    "seg-xlarge": "rf-detr-seg-xlarge.pt",
    "seg-2xlarge": "rf-detr-seg-xxlarge.pt",
}


# ModelConfig fields that earlier checkpoints stored but nothing ever read (always True).
RETIRED_MODEL_FIELDS = ("two_stage", "bbox_reparam", "lite_refpoint_refine", "layer_norm")


class ModelConfig(BaseModel):
    """Architecture of one RF-DETR detector.

    Field names follow the upstream configuration so that checkpoints and documentation read the
    same. ``num_classes`` is the highest class index; the class head has ``num_classes + 1`` rows
    (the COCO checkpoints: 90 -> 91 rows). The model is always two-stage with box
    reparameterisation, the only RF-DETR design; :meth:`from_stored` reads configs stored by
    earlier versions, which still named those switches.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    size: SizeName
    encoder: Literal["dinov2_windowed_small", "dinov2_windowed_base"]
    hidden_dim: int
    patch_size: int
    num_windows: int
    positional_encoding_size: int
    out_feature_indexes: list[int]
    projector_scale: list[Literal["P3", "P4", "P5", "P6"]]
    dec_layers: int
    sa_nheads: int
    ca_nheads: int
    dec_n_points: int
    resolution: int
    num_classes: int = 90
    num_queries: int = 300
    num_select: int = 300
    group_detr: int = 13
    dim_feedforward: int = 2048
    aux_loss: bool = True
    # Training only: recompute ViT blocks in backward instead of storing their activations. Off, as
    # upstream: it saves little memory for what it costs (nano on CPU, batch 2 at 384: -8% peak RSS,
    # +25% step time; batch 4 at 192: -1.5% peak RSS, +4% step time).
    gradient_checkpointing: bool = False
    # Upstream 1.11's built-in mask head (the seg sizes): mask logits for every query at 1/mask_downsample_ratio
    # of the input, from the first projector level and each decoder layer's query states.
    segmentation_head: bool = False
    mask_downsample_ratio: int = Field(4, ge=1)
    pretrain_weights: str | None = None

    @classmethod
    def from_stored(cls, stored: dict, **overrides) -> "ModelConfig":
        """A config saved in a checkpoint (fields of earlier versions that are no longer read dropped)."""
        fields = {k: v for k, v in stored.items() if k not in RETIRED_MODEL_FIELDS}
        return cls(**{**fields, **overrides})

    @property
    def encoder_spec(self) -> EncoderSpec:
        return ENCODERS[self.encoder]

    @property
    def block_size(self) -> int:
        """Input sides must be multiples of this (one window of patches)."""
        return self.patch_size * self.num_windows

    @property
    def num_feature_levels(self) -> int:
        return len(self.projector_scale)

    @field_validator("projector_scale")
    @classmethod
    def _levels_sorted(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("projector_scale needs at least one level, e.g. ['P4']")
        if sorted(value) != value or len(set(value)) != len(value):
            raise ValueError(f"projector_scale must be distinct levels in ascending order, got {value}")
        if value == ["P6"]:
            raise ValueError("P6 is pooled from the previous level; it cannot be the only level")
        return value

    @field_validator("out_feature_indexes")
    @classmethod
    def _taps_sorted(cls, value: list[int]) -> list[int]:
        if not value or sorted(set(value)) != value or value[0] < 1:
            raise ValueError(f"out_feature_indexes must be ascending ViT stage numbers >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _check_geometry(self) -> "ModelConfig":
        spec = self.encoder_spec
        if self.out_feature_indexes[-1] > spec.depth:
            raise ValueError(f"out_feature_indexes {self.out_feature_indexes} exceed the {spec.depth} ViT layers")
        if self.resolution % self.block_size:
            raise ValueError(
                f"resolution {self.resolution} must be a multiple of patch_size x num_windows = {self.block_size}"
            )
        for name, heads in (("sa_nheads", self.sa_nheads), ("ca_nheads", self.ca_nheads)):
            if self.hidden_dim % heads:
                raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by {name}={heads}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        return self


# Native geometry of the published upstream 1.2.1 checkpoints.
SIZE_PRESETS: dict[str, dict] = {
    "nano": dict(
        encoder="dinov2_windowed_small", hidden_dim=256, patch_size=16, num_windows=2,
        positional_encoding_size=24, out_feature_indexes=[3, 6, 9, 12], projector_scale=["P4"],
        dec_layers=2, sa_nheads=8, ca_nheads=16, dec_n_points=2, resolution=384,
    ),
    "small": dict(
        encoder="dinov2_windowed_small", hidden_dim=256, patch_size=16, num_windows=2,
        positional_encoding_size=32, out_feature_indexes=[3, 6, 9, 12], projector_scale=["P4"],
        dec_layers=3, sa_nheads=8, ca_nheads=16, dec_n_points=2, resolution=512,
    ),
    "medium": dict(
        encoder="dinov2_windowed_small", hidden_dim=256, patch_size=16, num_windows=2,
        positional_encoding_size=36, out_feature_indexes=[3, 6, 9, 12], projector_scale=["P4"],
        dec_layers=4, sa_nheads=8, ca_nheads=16, dec_n_points=2, resolution=576,
    ),
    "base": dict(
        encoder="dinov2_windowed_small", hidden_dim=256, patch_size=14, num_windows=4,
        positional_encoding_size=37, out_feature_indexes=[2, 5, 8, 11], projector_scale=["P4"],
        dec_layers=3, sa_nheads=8, ca_nheads=16, dec_n_points=2, resolution=560,
    ),
    "large": dict(
        encoder="dinov2_windowed_base", hidden_dim=384, patch_size=14, num_windows=4,
        positional_encoding_size=37, out_feature_indexes=[2, 5, 8, 11], projector_scale=["P3", "P5"],
        dec_layers=3, sa_nheads=12, ca_nheads=24, dec_n_points=4, resolution=560,
    ),
}


def _seg_preset(num_windows: int, dec_layers: int, resolution: int, num_queries: int) -> dict:
    """Upstream 1.11's segmentation geometry: DINOv2-S with 12-pixel patches, one P4 level, a built-in mask head."""
    return dict(encoder="dinov2_windowed_small", hidden_dim=256, patch_size=12, num_windows=num_windows,
                positional_encoding_size=resolution // 12, out_feature_indexes=[3, 6, 9, 12], projector_scale=["P4"],
                dec_layers=dec_layers, sa_nheads=8, ca_nheads=16, dec_n_points=2, resolution=resolution,
                num_queries=num_queries, num_select=num_queries, segmentation_head=True)


SIZE_PRESETS.update({
    "seg-preview": _seg_preset(num_windows=2, dec_layers=4, resolution=432, num_queries=200),
    "seg-nano": _seg_preset(num_windows=1, dec_layers=4, resolution=312, num_queries=100),
    "seg-small": _seg_preset(num_windows=2, dec_layers=4, resolution=384, num_queries=100),
    "seg-medium": _seg_preset(num_windows=2, dec_layers=5, resolution=432, num_queries=200),
    "seg-large": _seg_preset(num_windows=2, dec_layers=5, resolution=504, num_queries=200),
    "seg-xlarge": _seg_preset(num_windows=2, dec_layers=6, resolution=624, num_queries=300),
    "seg-2xlarge": _seg_preset(num_windows=2, dec_layers=6, resolution=768, num_queries=300),
})


def wrapper_name(size: str) -> str:
    """The Python class of a size: ``"nano"`` -> ``RFDETRNano``, ``"seg-2xlarge"`` -> ``RFDETRSeg2XLarge``."""
    words = {"xlarge": "XLarge", "2xlarge": "2XLarge"}
    return "RFDETR" + "".join(words.get(part, part.capitalize()) for part in size.split("-"))


def model_config(size: str, **overrides) -> ModelConfig:
    """The validated :class:`ModelConfig` of ``size`` with ``overrides`` applied.

    Raises ``ValueError`` for an unknown size and pydantic's ``ValidationError`` (a ``ValueError``)
    for unknown or invalid fields.
    """
    if size not in SIZE_PRESETS:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES + SEG_SIZES)}")
    fields = {"size": size, "pretrain_weights": PRETRAINED_NAMES[size], **SIZE_PRESETS[size], **overrides}
    return ModelConfig(**fields)


class TrainConfig(BaseModel):
    """How to train: data, optimisation, schedule, checkpoints and logging.

    The training scripts map their flags onto these fields and nothing else declares a default.
    ``grad_accum_steps`` micro-batches of ``batch_size`` images make one optimizer step.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dataset_dir: str = "dataset"
    output_dir: str = "output"
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum_steps: int = Field(4, ge=1)
    num_workers: int = Field(2, ge=0)
    resolution: int | None = None  # None: the model's native resolution
    multi_scale: bool = True
    expanded_scales: bool = True
    # Multi-scale sides follow the training resolution: the size's native set scaled by resolution / native
    # (False: upstream's sides around the resolution, which at low resolution reach down to 64 px).
    relative_scales: bool = True
    do_random_resize_via_padding: bool = False
    lr: float = Field(1e-4, gt=0)
    lr_encoder: float = Field(1.5e-4, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    lr_vit_layer_decay: float = Field(0.8, gt=0, le=1)
    lr_component_decay: float = Field(0.7, gt=0, le=1)
    # "step": constant until lr_drop epochs, then 10x lower (upstream's train() default; on short runs it
    # learns more than a cosine that decays to zero); "cosine": to lr_min_factor over the run
    lr_scheduler: Literal["cosine", "step"] = "step"
    lr_drop: int = Field(100, ge=1)  # "step": epochs before the 10x drop
    lr_min_factor: float = Field(0.0, ge=0, le=1)
    warmup_epochs: float = Field(0.0, ge=0)
    clip_max_norm: float = Field(0.1, ge=0)  # 0 disables clipping
    use_ema: bool = True
    ema_decay: float = Field(0.993, ge=0, lt=1)
    ema_tau: float = Field(100.0, ge=0)
    amp: bool = True  # with precision "auto": mixed precision on CUDA; False: fp32 there too
    # "auto": bf16 (else fp16) autocast on CUDA when amp, fp32 elsewhere; "bf16" also on CPUs with
    # native bf16 (AVX-512 BF16 / AMX); "fp32" everywhere; see rfdetr.util.precision
    precision: Precision = "auto"
    seed: int = 42
    cls_loss_coef: float = 1.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    set_cost_class: float = 2.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    focal_alpha: float = 0.25
    early_stopping: bool = True  # on the validation AP that selects checkpoints
    early_stopping_patience: int = Field(10, ge=1)
    early_stopping_min_delta: float = Field(0.001, ge=0)
    early_stopping_use_ema: bool = False
    checkpoint_interval: int = Field(10, ge=1)  # also keep checkpoint<epoch>.pth every N epochs
    tensorboard: bool = True
    wandb: bool = False
    project: str | None = None
    run: str | None = None
    run_test: bool = True
    device: str | None = None  # None: cuda, else mps, else cpu
    resume: str | None = None
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cap for quick runs and tests
    plots: bool = True  # results.png every epoch; val_predictions.jpg and confusion_matrix.png at the end
    # "auto": a bar on a terminal, else a line every ~30 s and one per epoch; "bar", "line", "none"
    progress: Literal["auto", "bar", "line", "none"] = "auto"

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> "TrainConfig":
        """A config saved in a checkpoint; ``progress_bar: false`` of earlier versions is ``progress: "none"``."""
        fields = dict(stored)
        if fields.pop("progress_bar", True) is False:
            fields["progress"] = "none"
        return cls(**fields)


# The size a training script builds when --size is not given (stage 2 takes its detector's).
DEFAULT_SCRIPT_SIZE = {"detector": "small", "joint": "nano"}
# DETRsegm's mask heads: "detr" (DETR's FPN-style head, MaskHeadSmallConv) and "light" (MaskHeadNano, for the
# nano size). Files of earlier versions call them "small" and "nano", the names of model sizes.
MASK_HEADS: tuple[str, ...] = ("detr", "light")
RETIRED_MASK_HEAD_NAMES = {"small": "detr", "nano": "light"}
# "built-in": the mask head inside the detector of a segmentation size (upstream 1.11's, rfdetr.models.seg_head)
BUILT_IN_MASK_HEAD = "built-in"
MaskHeadName = Literal["detr", "light", "built-in"]
# Loss weights of the built-in head (upstream 1.11's mask_ce_loss_coef and mask_dice_loss_coef).
BUILT_IN_MASK_LOSS_COEFS = {"mask_loss_coef": 5.0, "dice_loss_coef": 5.0}
StageName = Literal["detector", "masks", "joint"]


class MaskConfig(BaseModel):
    """The mask head of a segmentation model and how it trains.

    ``mask_head``: ``"light"`` (for the nano size) or ``"detr"`` (DETR's head), both wrapped
    around the detector (``DETRsegm``), or ``"built-in"``: the detector of a segmentation size has its
    own (it trains with the detector, single stage); ``frozen_detector``: stage 2 (only the mask head
    trains) or single stage (everything trains).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    mask_head: MaskHeadName
    frozen_detector: bool = True
    mask_loss_coef: float = Field(1.0, ge=0)
    dice_loss_coef: float = Field(1.0, ge=0)

    @field_validator("mask_head", mode="before")
    @classmethod
    def _earlier_names(cls, value: Any) -> Any:
        return RETIRED_MASK_HEAD_NAMES.get(value, value) if isinstance(value, str) else value


def mask_config(size: str, *, built_in: bool = False, **overrides) -> MaskConfig:
    """The :class:`MaskConfig` of ``size``: the light head for nano, DETR's head otherwise; with
    ``built_in`` (a detector with its own mask head) that head, trained with the detector."""
    given = {k: v for k, v in overrides.items() if v is not None}  # None: "not given"
    if built_in:
        return MaskConfig(**{"mask_head": BUILT_IN_MASK_HEAD, "frozen_detector": False, **BUILT_IN_MASK_LOSS_COEFS,
                             **given})
    return MaskConfig(**{"mask_head": "light" if size == "nano" else "detr", **given})


class RunConfig(BaseModel):
    """Everything that describes a training run; every checkpoint stores it, ``--resume RUN_DIR`` reads it.

    The stage follows from ``mask`` (:attr:`stage`): none -> ``"detector"`` (stage 1); a mask head on
    the frozen detector -> ``"masks"`` (stage 2); detector and mask head together -> ``"joint"``
    (single stage). A ``stage`` given (or stored) beside them must agree.
    """

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig
    train: TrainConfig
    mask: MaskConfig | None = None

    @computed_field
    @property
    def stage(self) -> StageName:
        if self.mask is None:
            return "detector"
        return "masks" if self.mask.frozen_detector else "joint"

    @model_validator(mode="before")
    @classmethod
    def _stated_stage_agrees(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "stage" not in data:
            return data
        fields = dict(data)
        stated, mask = fields.pop("stage"), fields.get("mask")
        frozen = mask.frozen_detector if isinstance(mask, MaskConfig) else (mask or {}).get("frozen_detector", True)
        derived = "detector" if mask is None else "masks" if frozen else "joint"
        if stated != derived:
            raise ValueError(f"stage {stated!r} does not match the mask config (which makes it {derived!r})")
        return fields

    @model_validator(mode="after")
    def _mask_fits_the_model(self) -> "RunConfig":
        if self.mask is None and self.model.segmentation_head:
            raise ValueError(f"a {self.model.size} model has a built-in mask head: training it as a detector "
                             "would leave its masks stale; train it with its masks (stage 'joint')")
        built_in = self.mask is not None and self.mask.mask_head == BUILT_IN_MASK_HEAD
        if self.mask is not None and built_in != self.model.segmentation_head:
            raise ValueError(f"a {self.model.size} model {'has' if self.model.segmentation_head else 'has no'} "
                             f"built-in mask head; mask_head={self.mask.mask_head!r} does not fit it")
        if built_in and self.stage != "joint":
            raise ValueError(f"a {self.model.size} model's built-in mask head trains with its detector: stage "
                             f"'joint' (train_seg_single_stage.py, or {wrapper_name(self.model.size)}().train()), "
                             f"not {self.stage!r}")
        return self
