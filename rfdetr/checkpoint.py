"""Reading, adapting and writing checkpoints.

Formats read: ours (``{"model", "config", "classes", ...}``), upstream RF-DETR / fork training
files (``{"model", "args": Namespace or dict, ...}``) and bare state dicts. Loading is strict:
every difference is either a declared head rebuild (another class count), an explicit
``exclude`` pattern, or an error. Files are written atomically (temporary file + rename), so an
interrupted save never leaves a broken checkpoint behind.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from rfdetr.classes import COCO_NUM_ROWS, ClassEntry, ClassTable
from rfdetr.config import SIZE_PRESETS, ModelConfig

logger = logging.getLogger(__name__)

# Every tensor whose shape depends on the number of classes. A class-count change rebuilds exactly these.
CLASS_HEAD_PATTERNS: tuple[str, ...] = ("class_embed.*", "transformer.enc_out_class_embed.*")
# Fields that decide the state-dict shapes (besides the class count).
GEOMETRY_FIELDS = ("encoder", "hidden_dim", "patch_size", "num_windows", "positional_encoding_size",
                   "out_feature_indexes", "projector_scale", "dec_layers", "sa_nheads", "ca_nheads", "dec_n_points")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says why and what to do."""


def is_class_head_key(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in CLASS_HEAD_PATTERNS)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a ``.pth`` file as a dict with at least ``"model"`` (a bare state dict is wrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # Upstream files pickle their arguments as an argparse.Namespace: allow just that class.
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError,
            AttributeError, TypeError) as error:  # what torch.load raises for damaged or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {error}. Is it a complete .pth file?") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, expected a dict")
    if "model" not in data:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            data = {"model": data}
        else:
            raise CheckpointError(f"checkpoint {path} has no 'model' entry (keys: {sorted(data)[:10]})")
    return data


def checkpoint_args(checkpoint: Mapping) -> dict:
    """The upstream/fork ``args`` (Namespace or dict) as a dict; empty when absent."""
    args = checkpoint.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def class_rows_of(state: Mapping[str, torch.Tensor]) -> int:
    if "class_embed.bias" not in state:
        raise CheckpointError("the checkpoint has no class head (class_embed.bias); it was stripped")
    return int(state["class_embed.bias"].shape[0])


def checkpoint_class_table(checkpoint: Mapping) -> ClassTable | None:
    """The class table stored in (or implied by) a checkpoint; ``None`` if it has no class head.

    Ours: the stored table. Upstream training files: ``args.class_names`` (label ``i + 1`` is
    ``class_names[i]``). A 91-row head without names: the COCO table. Otherwise generic names.
    """
    if "classes" in checkpoint:
        return ClassTable.from_dict(checkpoint["classes"])
    state = checkpoint["model"]
    if "class_embed.bias" not in state:
        return None
    rows = class_rows_of(state)
    names = checkpoint_args(checkpoint).get("class_names")
    if names:
        if len(names) + 1 > rows:
            raise CheckpointError(f"checkpoint lists {len(names)} class names but its head has only {rows} rows")
        # Upstream convention: label i + 1 (= category id) is class_names[i].
        return ClassTable(tuple(ClassEntry(i + 1, i + 1, str(n)) for i, n in enumerate(names)), num_rows=rows)
    if rows == COCO_NUM_ROWS:
        return ClassTable.coco()
    return ClassTable.from_names([f"class_{i}" for i in range(rows - 1)])


def checkpoint_size(checkpoint: Mapping) -> str | None:
    """The model size a checkpoint was made for, from our config or upstream's args."""
    config = checkpoint.get("config")
    if isinstance(config, Mapping) and "size" in config:
        return str(config["size"])
    args = checkpoint_args(checkpoint)
    present = [name for name in GEOMETRY_FIELDS if name in args]
    for size, preset in SIZE_PRESETS.items():
        if present and all(args[name] == preset[name] for name in present):
            return size
    return None


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a model."""

    loaded: int = 0
    rebuilt_heads: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    dropped_groups: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, exclude: Sequence[str] = (),
                    strict: bool = True, source: str = "checkpoint", size: str | None = None) -> LoadReport:
    """Load ``state`` into ``model``.

    - class-head keys that differ in shape from the model's, or are absent, are not loaded (the
      model's heads are fresh modules of the right size); any other shape difference is an error;
    - keys matching an ``exclude`` fnmatch pattern are skipped and stay as initialised;
    - with ``strict``, any other missing or unexpected key is an error.
    Query tables longer than the model's (more groups) are cut to its rows.
    """
    own = model.state_dict()
    report = LoadReport()
    to_load = {}
    for key, tensor in state.items():
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in exclude):
            report.excluded.append(key)
            continue
        if key not in own:
            if _is_extra_group_head(key, own):
                report.dropped_groups.append(key)  # the model trains fewer query groups than the file
            else:
                report.unexpected.append(key)
            continue
        if key.endswith(("refpoint_embed.weight", "query_feat.weight")) and tensor.shape[0] > own[key].shape[0]:
            tensor = tensor[: own[key].shape[0]]
        if tensor.shape != own[key].shape:
            if is_class_head_key(key):
                report.rebuilt_heads.append(key)
                continue
            model_size = getattr(getattr(model, "config", None), "size", None)
            raise CheckpointError(
                f"{source} does not fit this model: {key} is {list(tensor.shape)} in the file but "
                f"{list(own[key].shape)} in the model. The file was made for "
                f"{size or 'another geometry'}, the model is {model_size or 'a different geometry'}; "
                "build the model of the checkpoint's size (e.g. RFDETRBase for rf-detr-base.pth)."
            )
        to_load[key] = tensor
    for key in own:
        if key in to_load or key in report.rebuilt_heads or _is_excluded(key, exclude):
            continue
        # A checkpoint without class heads (strip_class_heads.py) gets fresh ones.
        (report.rebuilt_heads if is_class_head_key(key) else report.missing).append(key)
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(
            f"{source} does not match the model: {len(report.missing)} missing keys "
            f"{report.missing[:5]}, {len(report.unexpected)} unexpected keys {report.unexpected[:5]}. "
            "Pass exclude patterns for parts you mean to re-initialise."
        )
    result = model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load) - len(result.unexpected_keys)
    _log_report(report, source)
    return report


_GROUP_HEAD = re.compile(r"^(transformer\.enc_(?:output|output_norm|out_bbox_embed|out_class_embed))\.(\d+)\.")


def _is_extra_group_head(key: str, own: Mapping[str, torch.Tensor]) -> bool:
    """A two-stage head of a query group the model does not have (its group_detr is smaller)."""
    match = _GROUP_HEAD.match(key)
    return bool(match) and not any(k.startswith(f"{match.group(1)}.{match.group(2)}.") for k in own) and any(
        k.startswith(f"{match.group(1)}.0.") for k in own)


def _is_excluded(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def _log_report(report: LoadReport, source: str) -> None:
    logger.info("loaded %d tensors from %s", report.loaded, source)
    if report.rebuilt_heads:
        logger.info("class heads re-initialised for the new class count: %d tensors", len(report.rebuilt_heads))
    if report.excluded:
        logger.info("excluded by pattern (kept as initialised): %d tensors", len(report.excluded))
    if report.dropped_groups:
        logger.info("two-stage heads of query groups this model does not train, not loaded: %d tensors",
                    len(report.dropped_groups))
    if report.missing:
        logger.warning("missing in %s (kept as initialised): %s", source, report.missing[:10])
    if report.unexpected:
        logger.warning("unexpected in %s (ignored): %s", source, report.unexpected[:10])


def make_checkpoint(model: nn.Module, config: ModelConfig, classes: ClassTable, **extra: Any) -> dict:
    """A self-describing checkpoint dict: weights, config, class table, package version, extras."""
    from rfdetr import __version__

    return {"model": model.state_dict(), "config": config.model_dump(), "classes": classes.to_dict(),
            "rfdetr_version": __version__, **extra}


def save_checkpoint(checkpoint: Mapping, path: str | os.PathLike) -> Path:
    """Write atomically: a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(dict(checkpoint), temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
