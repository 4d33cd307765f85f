"""Reading, adapting and writing checkpoints.

Formats read: ours (``{"model", "config", "classes", ...}``), upstream RF-DETR / fork training
files (``{"model", "args": Namespace or dict, ...}``, and from upstream 1.6 on Lightning files, see
:mod:`rfdetr.checkpoints.upstream`) and bare state dicts. Loading is strict:
every difference is an explicit ``exclude`` pattern or an error. Files are written by
:func:`rfdetr.checkpoints.durable.save_checkpoint` (atomic and durable).
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import logging
import os
import pathlib
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from rfdetr.checkpoints.upstream import (
    UpstreamFileError,
    drop_weightless_buffers,
    plain_checkpoint,
    upstream_geometry,
    upstream_version,
)
from rfdetr.classes import COCO_CATEGORIES, COCO_NUM_ROWS, ClassTable, upstream_class_table
from rfdetr.config import RETIRED_MODEL_FIELDS, SIZE_PRESETS, MaskConfig, ModelConfig, RunConfig, TrainConfig

logger = logging.getLogger(__name__)

# Every tensor whose shape depends on the number of classes. A class-count change rebuilds exactly these.
CLASS_HEAD_PATTERNS: tuple[str, ...] = ("class_embed.*", "transformer.enc_out_class_embed.*")
# Fields that decide the state-dict shapes (besides the class count).
GEOMETRY_FIELDS = ("encoder", "hidden_dim", "patch_size", "num_windows", "positional_encoding_size",
                   "out_feature_indexes", "projector_scale", "dec_layers", "sa_nheads", "ca_nheads", "dec_n_points")


# Prefix of the detector's keys inside a mask model (DETRsegm) checkpoint.
DETECTOR_PREFIX = "detr."


def trusted_globals() -> list:
    """Data-only types that training files of the pretrained-weights table may pickle in ``args``:
    filesystem paths and numpy scalars/arrays (under numpy 2's and numpy 1's module names)."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    found = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath, np.dtype,
             np.ndarray, multiarray.scalar, multiarray._reconstruct]
    for legacy in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found += [(multiarray.scalar, f"{legacy}.scalar"), (multiarray._reconstruct, f"{legacy}._reconstruct")]
    found += [type(np.dtype(kind)) for kind in ("float64", "float32", "int64", "int32", "bool")]
    return found


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says why and what to do."""


def is_class_head_key(key: str) -> bool:
    """A class-head tensor of the detector, bare or inside a mask model (``detr.`` prefix)."""
    key = key[len(DETECTOR_PREFIX):] if key.startswith(DETECTOR_PREFIX) else key
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in CLASS_HEAD_PATTERNS)


def detector_state(state: Mapping) -> dict:
    """The detector part of a state dict: mask-model files keep it under ``detr.``, detector files bare."""
    if any(key.startswith(DETECTOR_PREFIX) for key in state):
        return {key[len(DETECTOR_PREFIX):]: value for key, value in state.items() if key.startswith(DETECTOR_PREFIX)}
    return dict(state)


def read_checkpoint(path: str | os.PathLike, *, trusted: bool = False, dropped: list[str] | None = None) -> dict:
    """Load a ``.pth`` file as a dict with at least ``"model"`` (a bare state dict is wrapped).

    An upstream Lightning file gives one set of weights (:func:`rfdetr.checkpoints.upstream.plain_checkpoint`); the
    names of the copies it leaves out are appended to ``dropped``. Upstream's weightless keypoint buffer
    is removed from the weights.

    Loading never runs pickled code (``weights_only``): besides tensors and plain data only
    ``argparse.Namespace`` (upstream's ``args``) is accepted, and with ``trusted`` (files from the
    pretrained-weights table) also the data-only types of :func:`trusted_globals`. A file that
    needs anything else is refused with the globals it names and how to allow them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    allowed = [argparse.Namespace, *(trusted_globals() if trusted else ())]
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _unsafe_globals(path, allowed)
        if not unsafe:
            raise CheckpointError(f"cannot read checkpoint {path}: {error}. Is it a complete .pth file?") from error
        raise CheckpointError(
            f"checkpoint {path} holds pickled objects that are not plain data: {', '.join(unsafe)}. They are not "
            "loaded, as unpickling them could run code. If you trust this file, allow exactly these with "
            "torch.serialization.add_safe_globals([...]) before loading it.") from error
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError, IndexError,
            KeyError) as error:  # what torch.load raises for damaged or foreign files (a text file: IndexError)
        raise CheckpointError(f"cannot read checkpoint {path}: {error}. Is it a complete .pth file?") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, expected a dict")
    data, copies = plain_checkpoint(data, str(path))
    if copies:
        logger.info("%s: upstream's Lightning copies left out (%s); the weights used are its 'model'", path,
                    ", ".join(copies))
        if dropped is not None:
            dropped.extend(copies)
    if "model" not in data:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            data = {"model": data}
        else:
            raise CheckpointError(f"checkpoint {path} has no 'model' entry (keys: {sorted(data)[:10]}): it is no "
                                  "RF-DETR checkpoint (ours, upstream's .pth or .ckpt, or a bare state dict)")
    try:
        for key in ("model", "ema_model"):
            if isinstance(data.get(key), dict):
                data[key] = drop_weightless_buffers(data[key], str(path))
    except UpstreamFileError as error:
        raise CheckpointError(str(error)) from error
    class_head_rows(detector_state(data["model"]), str(path))  # heads that disagree: refused here
    return data


def _unsafe_globals(path: Path, allowed: Sequence) -> list[str]:
    """The globals a file needs beyond ``allowed`` (empty when the file cannot be scanned)."""
    names = {f"{g.__module__}.{g.__qualname__}" for g in allowed if not isinstance(g, tuple)}
    names |= {g[1] for g in allowed if isinstance(g, tuple)}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, OSError, ValueError) as error:
        logger.debug("cannot list the globals of %s: %s", path, error)
        return []
    return [name for name in found if name not in names]


def checkpoint_args(checkpoint: Mapping) -> dict:
    """The upstream/fork ``args`` (Namespace or dict) as a dict; empty when absent."""
    args = checkpoint.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def class_head_rows(state: Mapping[str, torch.Tensor], source: str = "the checkpoint") -> int | None:
    """The row count every class-head tensor of a detector state shares (``None``: no class head).

    Weights and biases of the final and the two-stage class heads that disagree are an error naming them.
    """
    rows = {key: int(value.shape[0]) for key, value in state.items() if is_class_head_key(key)}
    if len(set(rows.values())) > 1:
        counts = collections.Counter(rows.values())
        common = counts.most_common(1)[0][0]
        odd = ", ".join(f"{key} has {n}" for key, n in rows.items() if n != common)
        raise CheckpointError(f"{source} is inconsistent: its class-head tensors disagree on the number of classes "
                              f"({odd} rows, the others {common}): it is damaged or was edited by hand; use the "
                              "file it was made from")
    return next(iter(rows.values()), None)


def checkpoint_class_table(checkpoint: Mapping, source: str = "the checkpoint") -> ClassTable | None:
    """The class table stored in (or implied by) a checkpoint; ``None`` if it has no class head.

    Ours: the stored table, which must fit the head. Upstream training files: ``args.class_names``
    numbered as the release that wrote the file did (:func:`rfdetr.classes.upstream_class_table`); the
    COCO names on a 91-row head are the COCO table. Without names the upstream convention is assumed
    and logged: a 91-row head is the COCO table, any other head has row r = category id r, row 0 unused.
    """
    rows = class_head_rows(detector_state(checkpoint["model"]), source)
    if "classes" in checkpoint:
        table = ClassTable.from_dict(checkpoint["classes"])
        if rows is not None and rows != table.num_rows:
            raise CheckpointError(f"{source} is inconsistent: its class table has {table.num_rows} head rows "
                                  f"({table.describe()}) but class_embed.bias has {rows}")
        return table
    if rows is None:
        return None
    names = checkpoint_args(checkpoint).get("class_names")
    if names:
        if rows == COCO_NUM_ROWS and list(names) == [name for _, name in COCO_CATEGORIES]:
            return ClassTable.coco()
        try:
            return upstream_class_table(list(names), rows, upstream_version(checkpoint))
        except ValueError as error:
            raise CheckpointError(f"{source}: {error}") from error
    if rows == COCO_NUM_ROWS:
        logger.info("%s stores no class names: its 91-row head is read as the COCO table (row = COCO id)", source)
        return ClassTable.coco()
    logger.warning("%s stores no class names: assuming the upstream convention, head row r = category id r "
                   "for r = 1..%d (named class_<r>), row 0 unused. Pass class_names=[...] to name them, or train "
                   "with the dataset whose category ids these are.", source, rows - 1)
    return ClassTable.placeholder(range(1, rows), num_rows=rows)


def checkpoint_size(checkpoint: Mapping, source: str = "the checkpoint") -> str | None:
    """The model size a checkpoint was made for: our config, upstream's ``model_name`` (from 1.7) or its args."""
    config = checkpoint.get("config")
    if isinstance(config, Mapping) and "size" in config:
        return str(config["size"])
    geometry = stored_upstream_geometry(checkpoint, source)
    if geometry is not None:
        return geometry[0]
    args = checkpoint_args(checkpoint)
    present = [name for name in GEOMETRY_FIELDS if name in args]
    for size, preset in SIZE_PRESETS.items():
        if present and all(args[name] == preset[name] for name in present):
            return size
    return None


def stored_upstream_geometry(checkpoint: Mapping, source: str = "the checkpoint") -> tuple[str, dict] | None:
    """``(size, model-config fields)`` an upstream file records (:func:`.upstream.upstream_geometry`)."""
    try:
        return upstream_geometry(checkpoint, source)
    except UpstreamFileError as error:
        raise CheckpointError(str(error)) from error


def stored_run_config(checkpoint: Mapping, source: str = "the checkpoint") -> RunConfig:
    """The :class:`RunConfig` a training checkpoint stores (``"run"``), or the one its older entries imply.

    Checkpoints written before the run config was stored hold ``config`` (model), ``train_config``
    and, for mask runs, ``masks``; files without these (upstream, weights-only) are not runs.
    """
    if isinstance(checkpoint.get("run"), Mapping):
        run = dict(checkpoint["run"])
        model = {k: v for k, v in run["model"].items() if k not in RETIRED_MODEL_FIELDS}
        return RunConfig.model_validate({**run, "model": model, "train": TrainConfig.from_stored(run["train"])})
    if not isinstance(checkpoint.get("config"), Mapping) or not isinstance(checkpoint.get("train_config"), Mapping):
        raise CheckpointError(f"{source} does not describe a training run (no stored run config): resume from the "
                              "checkpoint.pth of a run folder, or start a new run from this file")
    masks = checkpoint.get("masks") or None
    if masks is not None:
        masks = {k: v for k, v in masks.items() if k in MaskConfig.model_fields}
    return RunConfig(model=ModelConfig.from_stored(checkpoint["config"]),
                     train=TrainConfig.from_stored(checkpoint["train_config"]), mask=masks)


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a model."""

    loaded: int = 0
    excluded: list[str] = field(default_factory=list)
    dropped_groups: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, exclude: Sequence[str] = (),
                    strict: bool = True, source: str = "checkpoint", size: str | None = None) -> LoadReport:
    """Load ``state`` into ``model``.

    - keys matching an ``exclude`` fnmatch pattern are skipped and stay as initialised: this is
      the only way class heads are rebuilt (``exclude=CLASS_HEAD_PATTERNS``);
    - any shape difference is an error naming the key, both shapes and ``source``: class heads
      of another size are first re-sliced (:mod:`rfdetr.checkpoints.surgery`) or excluded, never replaced here;
    - a class head the file lacks (a stripped checkpoint) is an error that says what to pass;
    - with ``strict``, any other missing or unexpected key is an error.
    Query tables longer than the model's (more groups) are cut to its rows.
    """
    own = model.state_dict()
    report = LoadReport()
    to_load = {}
    for key, tensor in state.items():
        if _is_excluded(key, exclude):
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
            raise CheckpointError(_shape_mismatch(model, key, tensor, own[key], source, size))
        to_load[key] = tensor
    missing = [key for key in own if key not in to_load and not _is_excluded(key, exclude)]
    missing_heads = [key for key in missing if is_class_head_key(key)]
    if missing_heads:
        raise CheckpointError(
            f"{source} has no class heads ({missing_heads[0]} and {len(missing_heads) - 1} more are missing; it "
            "was stripped). Say which classes the model should have, class_names=[...] or num_classes=N, "
            "and the heads are built fresh (training takes the dataset's classes).")
    report.missing = missing
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


def _shape_mismatch(model: nn.Module, key: str, tensor: torch.Tensor, own: torch.Tensor, source: str,
                    size: str | None) -> str:
    shapes = f"{key} is {list(tensor.shape)} in the file but {list(own.shape)} in the model"
    if is_class_head_key(key):
        return (f"{source} does not fit this model's class head: {shapes}. The checkpoint's heads have "
                f"{tensor.shape[0]} rows, the model's {own.shape[0]}; pass class_names=[...] to keep the rows of "
                "those classes (or to rebuild the heads for new classes), or num_classes to match the file.")
    model_size = getattr(getattr(model, "config", None), "size", None)
    if size is not None and size == model_size:
        return (f"{source} does not fit this model: {shapes}. Both are {size}: the geometry the file stores (or "
                "the overrides given) does not describe its tensors; a stored config that disagrees with the "
                "tensors means the file was damaged or edited, use the file it was made from.")
    return (f"{source} does not fit this model: {shapes}. The file was made for {size or 'another geometry'}, "
            f"the model is {model_size or 'a different geometry'}; build the model of the checkpoint's size "
            "(e.g. RFDETRBase for rf-detr-base.pth).")


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
