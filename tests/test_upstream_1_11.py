"""Files from upstream rfdetr 1.11: the right classes, the same detections and masks, every tool.

The files are written in 1.11.2's layout by ``upstream_1_11_files`` (what 1.11.2's ``train()`` wrote,
around deterministic weights whose ``square`` row is boosted); ``golden/upstream_1_11/predictions_1_11.pt``
holds 1.11.2's own ``predict`` on them (``tools/upstream_1_11_goldens.py``).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import skimage.data
import torch
from upstream_1_11_files import CLASS_NAMES, GOLDEN_DIR, KINDS, SQUARE_ROW, write_file

from rfdetr import RFDETR
from rfdetr.checkpoints.files import CheckpointError, checkpoint_class_table, is_class_head_key, read_checkpoint
from rfdetr.checkpoints.loading import load_model
from rfdetr.classes import ClassTable, upstream_class_table
from rfdetr.config import SEG_SIZES, model_config
from rfdetr.models import build_detector

SQUARE_CATEGORY_ID = 2  # the dataset's id of "square": parent "shapes" 0, circle 1, square 2, triangle 3
BOX_TOLERANCE_PX = 0.5
SCORE_TOLERANCE = 1e-3
MASK_IOU = 0.99


@functools.lru_cache(maxsize=None)
def goldens() -> dict:
    return torch.load(GOLDEN_DIR / "predictions_1_11.pt", weights_only=True)


@pytest.fixture(scope="module")
def upstream_file(tmp_path_factory):
    """``upstream_file(size, kind)``: the 1.11.2 file of that size and kind, written once per module."""
    folder = tmp_path_factory.mktemp("upstream_1_11")

    @functools.lru_cache(maxsize=None)
    def make(size: str, kind: str):
        return write_file(size, kind, folder / size / KINDS[kind])

    return make


def _golden_masks(entry: dict) -> np.ndarray:
    shape = entry["mask_shape"]
    bits = np.unpackbits(entry["mask_bits"].numpy())[:int(np.prod(shape))]
    return bits.reshape(shape).astype(bool)


def _assert_same_detections(detections, entry: dict) -> None:
    # Upstream also reports detections of the head's spare row as "__background__"; ours never does.
    keep = [i for i, name in enumerate(entry["class_name"]) if name != "__background__"]
    names = [entry["class_name"][i] for i in keep]
    assert list(detections.data["class_name"]) == names
    assert (detections.data["category_id"] == SQUARE_CATEGORY_ID).all()
    assert np.abs(detections.xyxy - entry["xyxy"][keep].numpy()).max(initial=0) <= BOX_TOLERANCE_PX
    assert np.abs(detections.confidence - entry["confidence"][keep].numpy()).max(initial=0) <= SCORE_TOLERANCE
    if "mask_bits" in entry:
        for ours, theirs in zip(detections.mask, _golden_masks(entry)[keep]):
            assert (ours & theirs).sum() / max((ours | theirs).sum(), 1) >= MASK_IOU


# Two cases run in `make check`; the whole matrix (each case writes a 250 MB file) in `make test`.
QUICK = {("nano", "total"), ("seg-nano", "last")}


@pytest.mark.parametrize("size, kind", [
    pytest.param(size, kind, marks=() if (size, kind) in QUICK else pytest.mark.slow)
    for size in ("nano", "small", "seg-nano") for kind in KINDS])
def test_predict_gives_upstream_classes_boxes_and_masks(upstream_file, size, kind):
    model = RFDETR(pretrain_weights=upstream_file(size, kind), device="cpu")
    assert model.config.size == size
    assert model.class_names == dict(enumerate(CLASS_NAMES))
    expected = goldens()["predictions"][f"{size}/{KINDS[kind]}"]
    found = 0
    for entry in expected:
        detections = model.predict(getattr(skimage.data, entry["photo"])(), threshold=goldens()["threshold"])
        _assert_same_detections(detections, entry)
        assert (detections.mask is not None) == size.startswith("seg-")
        found += len(detections)
    assert found > 0, "the goldens hold detections to compare"


def test_rfdetr_predict_needs_no_flag_for_an_upstream_file(upstream_file, tmp_path):
    from rfdetr.cli.main import main

    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    Image.fromarray(skimage.data.astronaut()).save(photos / "astronaut.png")
    out = tmp_path / "out"
    assert main(["predict", str(upstream_file("seg-nano", "total")), str(photos), "--out", str(out),
                 "--threshold", "0.6"]) == 0
    results = json.loads((out / "predictions.json").read_text())
    assert results and {r["category_id"] for r in results} == {SQUARE_CATEGORY_ID}
    assert all("segmentation" in r for r in results)
    assert (out / "astronaut.jpg").is_file()


def _every_tensor(value, path="") -> dict[str, torch.Tensor]:
    """Every tensor in a checkpoint, however deeply nested, by its path."""
    if isinstance(value, torch.Tensor):
        return {path: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    found = {}
    for key, item in items:
        found.update(_every_tensor(item, f"{path}/{key}"))
    return found


def _head_tensors(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {path: t for path, t in _every_tensor(checkpoint).items()
            if is_class_head_key(path.rsplit("/", 1)[-1].removeprefix("model.").removeprefix("module.model."))}


def test_shrink_keeps_the_named_row_and_leaves_no_stale_copy(upstream_file, tmp_path, capsys):
    from rfdetr.cli.shrink import shrink_main

    source = upstream_file("nano", "total")
    out = tmp_path / "square.pth"
    assert shrink_main(["--in_ckpt", str(source), "--out_ckpt", str(out), "--keep", "square"]) == 0
    assert "Lightning" in capsys.readouterr().out  # the copies it did not rewrite are named
    written = torch.load(out, map_location="cpu", weights_only=True)
    heads = _head_tensors(written)
    assert heads and all(t.shape[0] == 2 for t in heads.values())  # square + a spare row, in every copy
    original = read_checkpoint(source)["model"]["class_embed.bias"]
    assert written["model"]["class_embed.bias"][0] == original[SQUARE_ROW]
    model = RFDETR(pretrain_weights=out, device="cpu")
    detections = model.predict(skimage.data.astronaut(), threshold=goldens()["threshold"])
    entry = goldens()["predictions"]["nano/checkpoint_best_total.pth"][0]
    assert list(detections.data["class_name"]) == entry["class_name"] == ["square"] * len(entry["class_name"])
    assert np.abs(detections.confidence - entry["confidence"].numpy()).max() <= SCORE_TOLERANCE


@pytest.mark.parametrize("kind", ["total", "last"])
def test_strip_leaves_no_class_head_tensor_anywhere(upstream_file, tmp_path, kind):
    from rfdetr.cli.strip import strip_main

    source = upstream_file("nano", kind)
    assert _head_tensors(torch.load(source, map_location="cpu", weights_only=True))  # the file has them
    out = tmp_path / "stripped.pth"
    assert strip_main([str(source), str(out)]) == 0
    assert not _head_tensors(torch.load(out, map_location="cpu", weights_only=True))
    model = RFDETR(pretrain_weights=out, class_names=["a", "b"], device="cpu")
    assert model.model.class_embed.out_features == 3


def test_stage2_on_a_1_11_fine_tune_keeps_every_class(upstream_file):
    """The dataset numbers its classes 0..2 by sorted id; each takes the file's row of the same name."""
    dataset = ClassTable.from_categories([{"id": 0, "name": "shapes", "supercategory": "none"}]
                                         + [{"id": i + 1, "name": n, "supercategory": "shapes"}
                                            for i, n in enumerate(CLASS_NAMES)])
    source = upstream_file("nano", "total")
    rows = read_checkpoint(source)["model"]["class_embed.weight"]
    loaded = load_model(None, source, class_names=dataset, masks=False, require_trained_heads=True)
    for entry in dataset.entries:
        upstream_row = CLASS_NAMES.index(entry.name)
        assert torch.equal(loaded.model.class_embed.weight[entry.label], rows[upstream_row]), entry.name


def test_class_numbering_follows_the_release_that_wrote_the_file():
    names = ["circle", "square", "triangle"]
    by_row = lambda table: {e.label: e.name for e in table.entries}  # noqa: E731
    assert by_row(upstream_class_table(names, 5, None)) == {1: "circle", 2: "square", 3: "triangle"}  # 1.2: row = id
    assert by_row(upstream_class_table(names, 5, (1, 6, 2))) == {1: "circle", 2: "square", 3: "triangle"}
    assert by_row(upstream_class_table(names, 4, (1, 6, 2))) == {0: "circle", 1: "square", 2: "triangle"}
    assert by_row(upstream_class_table(names, 4, (1, 11, 2))) == {0: "circle", 1: "square", 2: "triangle"}
    assert [e.category_id for e in upstream_class_table(names, 4, (1, 11, 2)).entries] == [1, 2, 3]
    with pytest.raises(ValueError, match="do not fit"):
        upstream_class_table(names, 3, None)


def test_a_1_11_file_records_its_numbering(upstream_file):
    table = checkpoint_class_table(read_checkpoint(upstream_file("small", "ema")))
    assert table.names == list(CLASS_NAMES) and table.class_rows == [0, 1, 2] and table.num_rows == 4


@pytest.mark.parametrize("size", [*SEG_SIZES, "nano", "small"])
def test_state_dict_is_key_for_key_upstream_1_11(size):
    recorded = json.loads((GOLDEN_DIR / "keys_1_11.json").read_text())[size]["keys"]
    recorded.pop("_kp_active_mask")  # empty for every model without keypoints; not a weight
    ours = {key: list(t.shape) for key, t in build_detector(model_config(size)).state_dict().items()}
    assert ours == recorded


def test_files_of_models_this_package_does_not_build_are_refused_by_name(upstream_file, tmp_path):
    data = torch.load(upstream_file("nano", "ema"), map_location="cpu", weights_only=True)
    for name, change, message in (
            ("large-2026.pth", {"model_name": "RFDETRLarge"}, "RFDETRLarge model, which this package does not build"),
            ("keypoints.pth", {"model": {**data["model"], "_kp_active_mask": torch.ones(4, 17, dtype=torch.bool)}},
             "keypoint model"),
    ):
        path = tmp_path / name
        torch.save({**data, **change}, path)
        with pytest.raises(CheckpointError, match=message) as error:
            RFDETR(pretrain_weights=path, device="cpu")
        assert str(path) in str(error.value)
