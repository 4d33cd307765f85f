"""Shared fixtures: the golden reference data (tests/golden, README there) and filled models."""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

from rfdetr.config import model_config
from rfdetr.models import build_detector
from rfdetr.util.weight_fill import fill_model_

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
# The preprocessing upstream's inputs were made with (torchvision's to_tensor and normalize).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# The goldens were produced with 2 threads; use the same so float sums are ordered alike.
torch.set_num_threads(2)


def golden_path(name: str) -> Path:
    path = GOLDEN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"golden file {path} is missing: tools/trim_goldens.py re-makes tests/golden")
    return path


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _photo(image: dict) -> np.ndarray:
    """The scikit-image photo upstream started from, checked byte for byte."""
    photo = getattr(skimage.data, image["source"])()
    if list(photo.shape) != image["shape"] or _sha256(photo) != image["sha256_uint8"]:
        raise ValueError(f"skimage.data.{image['source']}() is not the photo the goldens were made from")
    return photo


def _model_input(photo: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 H x W x 3 -> /255 float32 [3, H, W] -> ImageNet-normalised -> bilinear antialiased resize."""
    image = torch.from_numpy(photo).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    image = (image - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return torch.nn.functional.interpolate(image[None], size=(height, width), mode="bilinear",
                                           align_corners=False, antialias=True)[0]


def _checked(tensor: torch.Tensor, stored: dict, name: str) -> torch.Tensor:
    """``tensor`` if it is bit for bit the upstream input whose shape and digest are ``stored``."""
    if list(tensor.shape) != stored["shape"] or _sha256(tensor.numpy()) != stored["sha256"]:
        raise ValueError(f"{name} rebuilt from the photo differs from upstream's input "
                         f"(shape {list(tensor.shape)} vs {stored['shape']}, or its bytes)")
    return tensor


def golden_inputs(meta: dict, digests: dict) -> dict:
    """Upstream's model inputs, rebuilt from the photos and checked against their stored digests.

    ``input_a`` [1, 3, R, R] is the astronaut; ``input_b`` is the list [astronaut [3, R, R], coffee
    [3, h, w]] (``meta["input_b_hw"]``), which the model pads into one batch.
    """
    resolution = meta["resolution"]
    astronaut = _model_input(_photo(meta["image_a"]), resolution, resolution)
    coffee = _model_input(_photo(meta["image_b"]), *meta["input_b_hw"][1])
    input_a = _checked(astronaut[None], digests["input_a"], "input_a")
    input_b = [_checked(image, stored, f"input_b[{i}]")
               for i, (image, stored) in enumerate(zip([astronaut, coffee], digests["input_b"]))]
    return {"input_a": input_a, "input_b": input_b}


@functools.lru_cache(maxsize=None)
def golden(size: str) -> dict:
    """``golden_<size>.pt`` (layout in tests/golden/README.md) with its model inputs rebuilt."""
    stored = torch.load(golden_path(f"golden_{size}.pt"), map_location="cpu", weights_only=True)
    return {**stored, **golden_inputs(stored["meta"], stored["inputs"])}


@functools.lru_cache(maxsize=None)
def reference_configs() -> dict:
    return json.loads(golden_path("configs.json").read_text())["sizes"]


def reference_keys(name: str) -> dict[str, tuple[list[int], str]]:
    """``keys_<name>.txt`` as {key: (shape, dtype name)}."""
    keys = {}
    for line in golden_path(f"keys_{name}.txt").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        keys[key] = (json.loads(shape), dtype)
    return keys


@functools.lru_cache(maxsize=None)
def reference_fill_module():
    """The reference implementation of the weight-fill rule (fill_weights.py)."""
    spec = importlib.util.spec_from_file_location("reference_fill_weights", golden_path("fill_weights.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FilledDetectors(dict):
    """size -> that size's detector with seed-0 filled weights, in eval mode; each size built on first use."""

    def __missing__(self, size: str):
        model = fill_model_(build_detector(model_config(size)), seed=0).eval()
        self[size] = model
        return model


@pytest.fixture(scope="session")
def filled_detectors() -> FilledDetectors:
    """The session's filled detectors, one per size, shared by every test.

    Tests read them through ``filled_detector`` and take private copies through ``filled_detector_copy``;
    a fixture of wider scope that needs a copy deep-copies one itself.
    """
    return FilledDetectors()


def _state_versions(model: torch.nn.Module) -> dict[str, int]:
    """Each state-dict tensor's version counter: every in-place change (copy_, +=, optimizer step) raises it."""
    return {key: value._version for key, value in model.state_dict(keep_vars=True).items()}


@pytest.fixture
def filled_detector(filled_detectors):
    """``filled_detector(size)``: the shared filled detector of that size, in eval mode, for reading only.

    After the test, each model handed out must still be in eval mode with no gradients and no state
    tensor changed in place, or the test fails and the model is dropped (the next test gets a fresh
    one). A test that trains or edits a model takes ``filled_detector_copy``.
    """
    handed_out: dict[str, dict[str, int]] = {}

    def get(size: str):
        model = filled_detectors[size]
        handed_out.setdefault(size, _state_versions(model))
        return model

    yield get
    damaged = []
    for size, versions in handed_out.items():
        model = filled_detectors[size]
        changed = [key for key, version in _state_versions(model).items() if versions[key] != version]
        with_grad = [name for name, p in model.named_parameters() if p.grad is not None]
        if model.training or changed or with_grad:
            del filled_detectors[size]  # the next test that asks gets a freshly built one
            damaged.append(f"{size} (training mode: {model.training}, changed in place: {changed[:3]}, "
                           f"gradients: {with_grad[:3]})")
    if damaged:
        pytest.fail(f"the test changed the shared detector: {'; '.join(damaged)}; use filled_detector_copy")


@pytest.fixture
def filled_detector_copy(filled_detectors):
    """``filled_detector_copy(size)``: a private deep copy of the shared filled detector, in eval mode."""

    def make(size: str):
        return copy.deepcopy(filled_detectors[size])

    return make


def reference_make_checkpoint():
    """The reference writer of upstream-format checkpoints (make_checkpoint.py)."""
    folder = str(GOLDEN_DIR)
    sys.path.insert(0, folder)  # it imports fill_weights from its own folder
    try:
        spec = importlib.util.spec_from_file_location("reference_make_checkpoint", golden_path("make_checkpoint.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(folder)


@pytest.fixture(scope="session")
def upstream_nano_file(tmp_path_factory):
    """A full upstream-format nano checkpoint ({'model', 'args': Namespace}), seed-0 weights (written once)."""
    path = tmp_path_factory.mktemp("upstream") / "rf-detr-nano-seed0.pth"
    reference_make_checkpoint().write_checkpoint("nano", 0, path, ref_dir=GOLDEN_DIR)
    return path


def tensorboard_tags(folder: Path) -> set[str]:
    """The scalar tags of the TensorBoard events in ``folder`` (``tensorboard --logdir`` shows these)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(folder.glob("events.out.tfevents.*")), f"no TensorBoard events in {folder}"
    events = EventAccumulator(str(folder))
    events.Reload()
    return set(events.Tags()["scalars"])
