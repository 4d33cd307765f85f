"""Shared fixtures: the golden reference data (../shared/reference) and filled models."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from rfdetr.config import model_config
from rfdetr.models import build_detector
from rfdetr.util.weight_fill import fill_model_

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("RFDETR_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))

# The goldens were produced with 2 threads; use the same so float sums are ordered alike.
torch.set_num_threads(2)


def reference_path(name: str) -> Path:
    path = REFERENCE_DIR / name
    if not path.exists():
        raise FileNotFoundError(
            f"reference file {path} is missing: the tests need ../shared/reference beside the repository "
            "(or RFDETR_REFERENCE_DIR pointing at it)"
        )
    return path


@functools.lru_cache(maxsize=None)
def golden(size: str) -> dict:
    return torch.load(reference_path(f"golden_{size}.pt"), map_location="cpu", weights_only=True)


@functools.lru_cache(maxsize=None)
def reference_configs() -> dict:
    return json.loads(reference_path("configs.json").read_text())["sizes"]


def reference_keys(name: str) -> dict[str, tuple[list[int], str]]:
    """``keys_<name>.txt`` as {key: (shape, dtype name)}."""
    keys = {}
    for line in reference_path(f"keys_{name}.txt").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        keys[key] = (json.loads(shape), dtype)
    return keys


@functools.lru_cache(maxsize=None)
def reference_fill_module():
    """The reference implementation of the weight-fill rule (fill_weights.py)."""
    spec = importlib.util.spec_from_file_location("reference_fill_weights", reference_path("fill_weights.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=2)
def _filled_detector(size: str):
    model = build_detector(model_config(size))
    return fill_model_(model, seed=0).eval()


@pytest.fixture
def filled_detector():
    """``filled_detector(size)``: the size's detector with seed-0 filled weights, in eval mode (cached)."""

    def make(size: str):
        return _filled_detector(size).eval()

    return make


def reference_make_checkpoint():
    """The reference writer of upstream-format checkpoints (make_checkpoint.py)."""
    folder = str(reference_path("make_checkpoint.py").parent)
    sys.path.insert(0, folder)  # it imports fill_weights from its own folder
    try:
        spec = importlib.util.spec_from_file_location("reference_make_checkpoint", reference_path("make_checkpoint.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(folder)


@pytest.fixture(scope="session")
def upstream_nano_file(tmp_path_factory):
    """A full upstream-format nano checkpoint ({'model', 'args': Namespace}), seed-0 weights (written once)."""
    path = tmp_path_factory.mktemp("upstream") / "rf-detr-nano-seed0.pth"
    reference_make_checkpoint().write_checkpoint("nano", 0, path, ref_dir=reference_path("keys_nano.txt").parent)
    return path


def tensorboard_tags(folder: Path) -> set[str]:
    """The scalar tags of the TensorBoard events in ``folder`` (``tensorboard --logdir`` shows these)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(folder.glob("events.out.tfevents.*")), f"no TensorBoard events in {folder}"
    events = EventAccumulator(str(folder))
    events.Reload()
    return set(events.Tags()["scalars"])
