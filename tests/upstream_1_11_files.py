"""Files in the layout upstream ``rfdetr`` 1.11.2 writes, made from this project's filled weights.

``golden/upstream_1_11/layout_1_11.json`` records what 1.11.2's own ``train()`` wrote (one CPU epoch on a
Roboflow-style set: parent ``shapes`` id 0, then circle/square/triangle): the entries of each file,
its ``args`` (paths replaced), ``model_config``, ``model_name`` and versions. :func:`write_file` writes the
same entries around deterministic weights: the regular weights are filled with seed 0, the EMA
weights with seed 1; in both every class head's bias is the class prior (as a new head starts) and
the ``square`` row's (row 1 in 1.11's numbering) is :data:`SQUARE_BOOST` higher, so that the
detections above 0.6 are squares with distinct scores, and a reader that numbers the rows as 1.2 did
names them ``circle``. ``tools/upstream_1_11_goldens.py`` runs 1.11.2's own ``predict`` on these
files; the tests compare ours with that.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import torch

from rfdetr.config import model_config
from rfdetr.models import build_detector
from rfdetr.models.lwdetr import CLASS_PRIOR_BIAS
from rfdetr.util.weight_fill import fill_model_

GOLDEN_DIR = Path(__file__).parent / "golden" / "upstream_1_11"
CLASS_NAMES = ("circle", "square", "triangle")
SQUARE_ROW = 1
SQUARE_BOOST = 4.0
KINDS = {"total": "checkpoint_best_total.pth", "ema": "checkpoint_best_ema.pth", "last": "last.ckpt"}
_LAYOUT_OF = {"nano": "nano", "small": "nano", "seg-nano": "seg-nano"}  # small's entries are nano's
_MODEL_NAMES = {"nano": "RFDETRNano", "small": "RFDETRSmall", "seg-nano": "RFDETRSegNano"}


@functools.lru_cache(maxsize=None)
def layout() -> dict:
    return json.loads((GOLDEN_DIR / "layout_1_11.json").read_text())


@functools.lru_cache(maxsize=None)
def _weights(size: str, seed: int) -> dict:
    config = model_config(size, num_classes=len(CLASS_NAMES))
    state = fill_model_(build_detector(config), seed=seed).state_dict()
    for key, value in state.items():
        if key.endswith("bias") and ("class_embed" in key):
            value.fill_(CLASS_PRIOR_BIAS)
            value[SQUARE_ROW] += SQUARE_BOOST
    return {"_kp_active_mask": torch.zeros(0, 0, dtype=torch.bool), **state}


def upstream_model_config(size: str) -> dict:
    stored = copy.deepcopy(layout()[_LAYOUT_OF[size]]["model_config"])
    ours = model_config(size)
    for key in ("hidden_dim", "patch_size", "num_windows", "positional_encoding_size", "dec_layers", "resolution",
                "num_queries", "num_select", "out_feature_indexes", "segmentation_head"):
        stored[key] = getattr(ours, key)
    stored.update(num_classes=len(CLASS_NAMES), model_name=_MODEL_NAMES[size])
    return stored


def write_file(size: str, kind: str, path: str | Path) -> Path:
    """Write the 1.11.2 ``kind`` file (``total``, ``ema`` or ``last``) of ``size`` (nano, small, seg-nano)."""
    recorded = layout()[_LAYOUT_OF[size]]
    entries = recorded["entries"][KINDS[kind]]
    regular, ema = _weights(size, 0), _weights(size, 1)
    callbacks = {name: {} for name in recorded["callbacks"]}
    callbacks["RFDETREMACallback"] = {"latest_update_step": 5,
                                      "average_model_state_dict": {f"module.model.{k}": v for k, v in ema.items()}}
    values = {
        "model": ema if kind in ("total", "ema") else regular,
        "args": {**recorded["args"], "class_names": list(CLASS_NAMES)},
        "model_name": _MODEL_NAMES[size],
        "model_config": upstream_model_config(size),
        "rfdetr_version": recorded["rfdetr_version"],
        "state_dict": {f"model.{k}": v for k, v in regular.items()},
        "global_step": 5, "epoch": 0, "pytorch-lightning_version": recorded["pytorch-lightning_version"],
        "loops": {}, "callbacks": callbacks, "optimizer_states": [], "lr_schedulers": [],
        "best_total_source": "ema",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: values[key] for key in entries}, path)
    return path
