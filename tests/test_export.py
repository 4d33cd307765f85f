"""ONNX export: named inputs/outputs, ONNX Runtime agrees with PyTorch, and predicts the same detections."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import skimage.data

from rfdetr import RFDETRNano
from rfdetr.export import ONNXDetector
from rfdetr.util.weight_fill import fill_model_


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = RFDETRNano(pretrain_weights=None, device="cpu")
    fill_model_(model.model, seed=0)
    path = model.export(tmp_path_factory.mktemp("onnx"))  # verifies ORT vs PyTorch (<= 1e-4 on logits)
    return model, path


def test_exported_graph_has_named_inputs_and_outputs(exported):
    _, path = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["boxes", "logits"]
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 384, 384]


def test_onnx_runtime_predict_matches_pytorch_predict(exported):
    model, path = exported
    runtime = ONNXDetector(path)
    assert runtime.class_names == model.class_names and runtime.resolution == 384
    photos = [skimage.data.astronaut(), skimage.data.coffee()]
    ours = model.predict(photos, threshold=0.3)
    theirs = runtime.predict(photos, threshold=0.3)
    # Randomly filled weights amplify float rounding (~1e-6 per product, which differs between MKL,
    # oneDNN and ONNX Runtime) to ~1e-3 in some scores of the coffee photo, enough to swap the ranks of
    # near-equal scores; so ranks are compared as sorted scores and the top boxes as a set.
    for a, b in zip(ours, theirs):
        count = min(len(a), len(b))
        assert abs(len(a) - len(b)) <= 2  # scores right at the threshold may fall either side
        np.testing.assert_allclose(a.confidence[:count], b.confidence[:count], atol=2e-3)
        for box, class_id in zip(a.xyxy[:10], a.class_id[:10]):
            same_class = b.xyxy[:20][b.class_id[:20] == class_id]
            assert len(same_class) and np.abs(same_class - box).max(axis=1).min() < 0.5, (box, class_id)
    with pytest.raises(ValueError, match=r"threshold must be a score in \[0, 1\], got 2"):
        runtime.predict(photos, threshold=2)


def test_missing_or_foreign_onnx_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.export"):
        ONNXDetector(tmp_path / "nope.onnx")


def test_mask_model_exports_masks_that_onnx_runtime_reproduces(tmp_path):
    model = RFDETRNano(pretrain_weights=None, masks=True, device="cpu", num_queries=20, resolution=128)
    fill_model_(model.model, seed=0)
    path = model.export(tmp_path)  # verifies logits and mask logits against PyTorch
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["boxes", "logits", "masks", "mask_queries"]
    photo = skimage.data.coffee()
    ours = model.predict(photo, threshold=0.0)
    theirs = ONNXDetector(path).predict(photo, threshold=0.0)
    assert ours.mask.shape == (len(ours), *photo.shape[:2]) and len(theirs) == len(ours)
    np.testing.assert_allclose(theirs.confidence, ours.confidence, atol=1e-4)
    assert (theirs.mask != ours.mask).mean() < 1e-3  # pixels on the 0-logit edge may flip


def test_int8_export_quantizes_the_matmuls_and_runs_in_onnx_detector(exported, tmp_path):
    from rfdetr.export import quantize_int8

    model, path = exported
    int8 = quantize_int8(path, tmp_path / "inference_model_int8.onnx")
    graph = onnx.load(str(int8)).graph
    kinds = {node.op_type for node in graph.node}
    assert "MatMulInteger" in kinds or "DynamicQuantizeLinear" in kinds  # int8 products, not fp32 MatMul only
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in int8_weights) > 0.5 * sum(p.numel() for p in model.model.parameters())
    assert int8.stat().st_size < 0.5 * path.stat().st_size
    runtime = ONNXDetector(int8)  # the rfdetr metadata came along
    assert runtime.class_names == model.class_names and runtime.resolution == 384
    assert len(runtime.predict(skimage.data.astronaut(), threshold=0.0)) == model.config.num_select
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="quantize must be one of int8"):
        model.export(tmp_path / "other", quantize="int4")
