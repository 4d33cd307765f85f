"""Files written by the upstream ``rfdetr`` package: which version, which layout, which geometry.

Upstream's training files changed over its releases (read from the files each release writes):

- 1.0–1.6: ``{"model", "args" (Namespace), "optimizer", ...}``, no version recorded;
- from 1.7: also ``rfdetr_version``, ``model_name`` (``"RFDETRNano"``) and ``model_config`` (the full
  geometry, ``num_classes`` = classes without the spare row); ``args`` became a dict;
- from 1.6 training runs under PyTorch Lightning: ``last.ckpt`` holds the weights only as a
  ``model.``-prefixed ``state_dict`` with the EMA weights in the EMA callback's state, and the ``.pth``
  files carry those Lightning copies beside ``model``; ``checkpoint_best_total.pth`` says in
  ``best_total_source`` whether its ``model`` is the EMA or the regular weights;
- from 1.8 the detector has a ``_kp_active_mask`` buffer, empty for models without keypoints.

:func:`plain_checkpoint` turns any of these into one set of weights under ``"model"`` and drops the
Lightning copies; :func:`upstream_version` reads the version; :func:`upstream_geometry` the size and
model-config fields of a file that records ``model_name`` / ``model_config``. Which head row is which
class in each version is :func:`rfdetr.classes.upstream_class_table`'s rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch

# upstream model class -> our size (RFDETRLargeDeprecated is the large of 1.2, our "large")
MODEL_NAME_SIZES = {
    "RFDETRNano": "nano", "RFDETRSmall": "small", "RFDETRMedium": "medium", "RFDETRBase": "base",
    "RFDETRLargeDeprecated": "large", "RFDETRSegPreview": "seg-preview", "RFDETRSegNano": "seg-nano",
    "RFDETRSegSmall": "seg-small", "RFDETRSegMedium": "seg-medium", "RFDETRSegLarge": "seg-large",
    "RFDETRSegXLarge": "seg-xlarge", "RFDETRSeg2XLarge": "seg-2xlarge",
}
# model_config fields that describe the network and mean the same in our ModelConfig
GEOMETRY_FROM_MODEL_CONFIG = ("encoder", "hidden_dim", "patch_size", "num_windows", "positional_encoding_size",
                              "out_feature_indexes", "projector_scale", "dec_layers", "sa_nheads", "ca_nheads",
                              "dec_n_points", "resolution", "num_queries", "num_select", "group_detr",
                              "segmentation_head", "mask_downsample_ratio")
# model_config settings of upstream features this package does not build; a file that turns one on is refused
_UNSUPPORTED_FEATURES = {"use_grouppose_keypoints": "keypoint heads", "dual_projector": "a dual projector",
                         "backbone_lora": "LoRA adapters", "num_decoder_registers": "decoder registers"}
# Buffers upstream keeps in the state dict that hold no weights for a model without keypoints.
WEIGHTLESS_BUFFERS = ("_kp_active_mask",)
LIGHTNING_ENTRIES = ("state_dict", "callbacks", "optimizer_states", "lr_schedulers", "loops", "global_step",
                     "pytorch-lightning_version", "epoch", "hparams_name", "hyper_parameters")
_LIGHTNING_PREFIX = "model."
_EMA_PREFIX = "module.model."
_COMPILED_PREFIX = "_orig_mod."


class UpstreamFileError(ValueError):
    """An upstream file this package cannot use as asked; the message names the file, the part and what to do."""


def upstream_version(checkpoint: Mapping) -> tuple[int, ...] | None:
    """The upstream release that wrote ``checkpoint`` (``None``: not recorded, or one of our files)."""
    if is_our_file(checkpoint):
        return None
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(checkpoint.get("rfdetr_version", "")))
    return tuple(int(part or 0) for part in found.groups()) if found else None


def is_our_file(checkpoint: Mapping) -> bool:
    """Whether this package wrote the file (it stores its model config). An upstream file that our
    surgery rewrote gains a class table but stays upstream's (its version, geometry and predict style)."""
    return "config" in checkpoint or "run" in checkpoint


def is_lightning(checkpoint: Mapping) -> bool:
    return isinstance(checkpoint.get("state_dict"), Mapping) and "pytorch-lightning_version" in checkpoint


def plain_checkpoint(data: dict, source: str) -> tuple[dict, list[str]]:
    """``data`` with one set of weights under ``"model"`` and without Lightning's copies.

    A Lightning file without ``model`` (``last.ckpt``) gives its ``state_dict`` (prefix ``model.``
    removed), or its EMA weights where ``best_total_source`` says the EMA is the best. Returns the file
    and the names of the entries dropped (the tools that rewrite files say so).
    """
    if not is_lightning(data) or is_our_file(data):
        return data, []
    result = dict(data)
    if "model" not in result:
        use_ema = result.get("best_total_source") == "ema"
        state = _ema_state(result) if use_ema else None
        result["model"] = state if state is not None else _strip(result["state_dict"], _LIGHTNING_PREFIX)
    dropped = [key for key in LIGHTNING_ENTRIES if key in result]
    for key in dropped:
        del result[key]
    return result, dropped


def _ema_state(data: Mapping) -> dict | None:
    for state in (data.get("callbacks") or {}).values():
        if isinstance(state, Mapping) and isinstance(state.get("average_model_state_dict"), Mapping):
            return _strip(state["average_model_state_dict"], _EMA_PREFIX)
    return None


def _strip(state: Mapping[str, Any], prefix: str) -> dict:
    stripped = {}
    for key, value in state.items():
        if key.startswith(prefix):
            key = key[len(prefix):]
            stripped[key[len(_COMPILED_PREFIX):] if key.startswith(_COMPILED_PREFIX) else key] = value
    return stripped


def drop_weightless_buffers(state: Mapping[str, torch.Tensor], source: str) -> dict:
    """``state`` without upstream's empty keypoint buffer; a non-empty one (a keypoint model) is refused."""
    result = dict(state)
    for key in WEIGHTLESS_BUFFERS:
        tensor = result.pop(key, None)
        if tensor is not None and tensor.numel():
            raise UpstreamFileError(f"{source} is an upstream keypoint model ({key} has shape {list(tensor.shape)}): "
                                    "this package has no keypoint heads; use upstream rfdetr for keypoints")
    return result


def upstream_geometry(checkpoint: Mapping, source: str) -> tuple[str, dict] | None:
    """``(size, model-config fields)`` of a file that records ``model_name`` / ``model_config`` (from 1.7)."""
    stored = checkpoint.get("model_config")
    name = checkpoint.get("model_name") or (stored.get("model_name") if isinstance(stored, Mapping) else None)
    if is_our_file(checkpoint) or (name is None and not isinstance(stored, Mapping)):
        return None
    if name not in MODEL_NAME_SIZES:
        known = ", ".join(MODEL_NAME_SIZES)
        raise UpstreamFileError(f"{source} holds an upstream {name or 'unnamed'} model, which this package does not "
                                f"build (it builds {known}); use upstream rfdetr for it")
    fields = {}
    if isinstance(stored, Mapping):
        on = [label for key, label in _UNSUPPORTED_FEATURES.items() if stored.get(key)]
        if on:
            raise UpstreamFileError(f"{source} uses {', '.join(on)}, which this package does not build; "
                                    "use upstream rfdetr for this file")
        fields = {key: stored[key] for key in GEOMETRY_FROM_MODEL_CONFIG if key in stored}
    return MODEL_NAME_SIZES[name], fields


@dataclass(frozen=True)
class PredictStyle:
    """How ``predict`` prepares images and boxes for a file, so that it detects what its own release does.

    antialias: the resize to the model's resolution is antialiased; clamp_boxes: boxes are clipped to the image.
    """

    antialias: bool = True
    clamp_boxes: bool = False


# From 1.9 upstream resizes without antialiasing (as its training augmentation does) and clips boxes.
PREDICT_STYLE_SINCE_1_9 = PredictStyle(antialias=False, clamp_boxes=True)


def predict_style(checkpoint: Mapping | None) -> PredictStyle:
    """The :class:`PredictStyle` of the release that wrote ``checkpoint`` (ours and older files: the default)."""
    version = upstream_version(checkpoint) if checkpoint is not None else None
    return PREDICT_STYLE_SINCE_1_9 if version is not None and version >= (1, 9) else PredictStyle()
