"""rfdetr.accel: the private kernels still exist and give F.linear's result, which inputs take which path,
which kernel a CPU gets, the bf16 variants, and that ``accelerate`` keeps state-dict keys, copies, pickling
and the traced graph of the plain model.

The routing tests put a recording stand-in where the oneDNN op would be, so they read the same on
a torch build with or without oneDNN.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.accel import accelerate, kernels
from rfdetr.accel import linear as accel_linear
from rfdetr.accel.bf16 import (
    Bf16StreamViT,
    Fp32TrainingMultiheadAttention,
    Fp32TrainingViTAttention,
    attention_under_cpu_autocast,
)
from rfdetr.accel.kernels import choose_kernel
from rfdetr.accel.linear import CpuLinear
from rfdetr.config import model_config
from rfdetr.models import build_detector
from rfdetr.util.weight_fill import fill_model_

# --- the private ops: a torch release that changes them fails here ---------------------------------

def test_onednn_linear_op_exists_and_gives_f_linear():
    assert torch.backends.mkldnn.is_available(), "this x86 torch build has lost oneDNN"
    op = kernels.onednn_linear_op()
    assert op is not None, "torch.ops.mkldnn._linear_pointwise is gone: rfdetr.accel.kernels needs updating"
    x, weight, bias = torch.randn(2, 7, 64), torch.randn(32, 64), torch.randn(32)
    with torch.inference_mode():
        torch.testing.assert_close(op(x, weight, bias, "none", [], ""), F.linear(x, weight, bias),
                                   atol=1e-5, rtol=1e-5)


def test_mkl_packed_linear_ops_exist_and_give_f_linear_bit_for_bit():
    assert kernels.mkl_linear_ops_available(), (
        "torch.ops.mkl._mkl_linear / _mkl_reorder_linear_weight are gone: rfdetr.accel.kernels needs updating")
    x, weight, bias = torch.randn(3, 7, 64), torch.randn(32, 64), torch.randn(32)
    with torch.inference_mode():
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, 21)
        out = torch.ops.mkl._mkl_linear(x, packed, weight, bias, 21)
    torch.testing.assert_close(out, F.linear(x, weight, bias), atol=0, rtol=0)


# --- CpuLinear routing ------------------------------------------------------------------------------

def _recording_kernel(monkeypatch) -> list:
    """Install a stand-in for the oneDNN op (it computes F.linear) and return the list of its calls."""
    calls = []

    def kernel(x, weight, bias, attr, scalars, algorithm):
        calls.append({"shape": tuple(x.shape), "contiguous": x.is_contiguous(), "weight": weight, "bias": bias,
                      "post_op": (attr, scalars, algorithm)})
        return F.linear(x, weight, bias)

    monkeypatch.setattr(accel_linear, "onednn_linear_op", lambda: kernel)
    return calls


def test_cpu_float32_inference_goes_to_the_kernel_with_contiguous_input(monkeypatch):
    calls = _recording_kernel(monkeypatch)
    layer = CpuLinear(16, 8, kernel="onednn")
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        out = layer(x)
        out_t = layer(x.transpose(0, 1))  # non-contiguous input
        layer(x[0])  # 2-D input
    assert [c["shape"] for c in calls] == [(2, 5, 16), (5, 2, 16), (5, 16)]
    assert all(c["contiguous"] for c in calls)  # the op needs contiguous memory: the layer copies first
    assert all(c["weight"] is layer.weight and c["bias"] is layer.bias for c in calls)
    assert all(c["post_op"] == ("none", [], "") for c in calls)  # no fused activation
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), atol=0, rtol=0)
    torch.testing.assert_close(out_t, F.linear(x.transpose(0, 1), layer.weight, layer.bias), atol=0, rtol=0)


def test_training_tracing_other_dtypes_and_shapes_use_f_linear(monkeypatch):
    calls = _recording_kernel(monkeypatch)
    layer = CpuLinear(16, 8, kernel="onednn")
    x = torch.randn(3, 16)
    layer(x).sum().backward()  # autograd needs F.linear (the op has no backward)
    assert layer.weight.grad is not None
    with torch.no_grad():
        layer(x[None, None])  # 4-D input
        layer.double()(x.double())  # float64
        layer.float()
        traced = torch.jit.trace(layer, x, check_trace=False)  # tracing (ONNX export) must record aten::linear
    assert "linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)
    assert calls == []
    with torch.no_grad():
        layer(x)  # and the kernel is used again afterwards
    assert len(calls) == 1
    assert isinstance(layer, nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}


def test_the_aten_kernel_is_f_linear(monkeypatch):
    calls = _recording_kernel(monkeypatch)
    layer = CpuLinear(16, 8, kernel="aten")
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=0, rtol=0)
    assert calls == []


@pytest.mark.parametrize(("vendor", "setting", "available", "kernel"), [
    ("AuthenticAMD", None, "mkl onednn", "aten"),  # neither beats F.linear's whole forward there (measured)
    ("GenuineIntel", None, "mkl onednn", "mkl"),  # packed MKL is the faster kernel on Intel
    ("", None, "mkl onednn", "aten"),  # vendor unknown (no /proc/cpuinfo, other architectures)
    ("GenuineIntel", "onednn", "mkl onednn", "onednn"),
    ("AuthenticAMD", "mkl", "mkl onednn", "mkl"),
    ("AuthenticAMD", "onednn", "mkl onednn", "onednn"),
    ("AuthenticAMD", "aten", "mkl onednn", "aten"),
    ("AuthenticAMD", "auto", "mkl onednn", "aten"),
    ("GenuineIntel", "fastest", "mkl onednn", "mkl"),  # not a setting: a warning and auto
    ("GenuineIntel", None, "onednn", "onednn"),  # a build without MKL takes the other kernel
    ("AuthenticAMD", "onednn", "mkl", "mkl"),
    ("GenuineIntel", None, "", "aten"),
])
def test_the_kernel_is_chosen_by_cpu_vendor_and_build_unless_the_environment_says(monkeypatch, vendor, setting,
                                                                                   available, kernel):
    if setting is None:
        monkeypatch.delenv("RFDETR_CPU_LINEAR", raising=False)
    else:
        monkeypatch.setenv("RFDETR_CPU_LINEAR", setting)
    assert choose_kernel(vendor, {name: True for name in available.split()}) == kernel


def test_packed_mkl_path_is_bit_identical_and_repacks_when_the_weight_changes():
    layer = CpuLinear(64, 32, kernel="mkl")
    x = torch.randn(3, 7, 64)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=0, rtol=0)
        torch.testing.assert_close(layer(x.transpose(0, 1)), F.linear(x.transpose(0, 1), layer.weight, layer.bias),
                                   atol=0, rtol=0)
        layer(x[0]), layer(x[:2])
    assert list(layer.derived_tensors["packed"]) == [7, 14]  # the last two row counts (21 was dropped)
    layer.load_state_dict({"weight": torch.randn(32, 64), "bias": torch.randn(32)})  # an in-place copy
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=0, rtol=0)
    twin = pickle.loads(pickle.dumps(copy.deepcopy(layer)))  # packed weights cannot be copied: rebuilt instead
    assert twin.derived_tensors == {}
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), F.linear(x, layer.weight, layer.bias), atol=0, rtol=0)


def test_bf16_inference_casts_the_weights_once_and_again_after_a_change():
    layer = CpuLinear(64, 32, kernel=kernels.fp32_kernel())
    x = torch.randn(3, 7, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.linear(x, layer.weight, layer.bias)
        with torch.inference_mode():
            out = layer(x)
            first = layer.derived_tensors["lowered"][1][0]
            layer(x)
            assert layer.derived_tensors["lowered"][1][0] is first  # reused, not cast again
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, atol=0.05, rtol=0.02)
    ema = {k: v for k, v in layer.state_dict().items()}
    with torch.no_grad():
        ema["weight"].mul_(-1)  # as an EMA update does: in place on the state dict's detached tensors
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        flipped = layer(x)
    torch.testing.assert_close(flipped, F.linear(x, layer.weight, layer.bias).bfloat16(), atol=0.05, rtol=0.02)
    assert not torch.allclose(flipped.float(), out.float(), atol=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = layer(x.requires_grad_())
    trained.float().sum().backward()  # with autograd recording the autocast path runs (and has a backward)
    assert layer.weight.grad is not None


def test_this_machines_inference_path_matches_f_linear():
    # Whatever kernel this machine takes, results differ from F.linear only in float summation order.
    layer = CpuLinear(64, 32, kernel=kernels.fp32_kernel())
    x = torch.randn(4, 7, 64)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer(x.transpose(0, 1)), F.linear(x.transpose(0, 1), layer.weight, layer.bias),
                                   atol=1e-5, rtol=1e-5)


# --- the bf16 variants ----------------------------------------------------------------------------

def test_attention_runs_in_fp32_under_a_cpu_autocast_only_while_autograd_records():
    seen = []

    def attend(q, k, v):
        seen.append((q.dtype, torch.is_autocast_enabled("cpu")))
        return F.scaled_dot_product_attention(q, k, v)

    q, k, v = (torch.randn(2, 3, 5, 8, dtype=torch.bfloat16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention_under_cpu_autocast(attend, q, k, v)
        with torch.no_grad():  # inference: the bf16 forward is the faster one
            inferred = attention_under_cpu_autocast(attend, q, k, v)
    assert seen == [(torch.float32, False), (torch.bfloat16, True)]
    assert out.dtype == torch.float32 and inferred.dtype == torch.bfloat16
    plain = attention_under_cpu_autocast(attend, q, k, v)  # no autocast: the call is unchanged
    assert seen[2] == (torch.bfloat16, False) and plain.dtype == torch.bfloat16


# --- accelerate() on a whole model ----------------------------------------------------------------

def _small_detector() -> nn.Module:
    config = model_config("nano", num_queries=20, num_select=20, resolution=64)
    return fill_model_(build_detector(config), seed=0).eval()


def test_accelerate_swaps_classes_in_place_and_keeps_parameters_and_keys():
    plain = _small_detector()
    model = copy.deepcopy(plain)
    parameters = {name: id(p) for name, p in model.named_parameters()}
    assert accelerate(model, "cpu", "bfloat16") is model
    assert {name: id(p) for name, p in model.named_parameters()} == parameters  # the same Parameter objects
    assert list(model.state_dict()) == list(plain.state_dict())
    kinds = {type(m) for m in model.modules()}
    assert nn.Linear not in kinds and CpuLinear in kinds
    assert {Bf16StreamViT, Fp32TrainingViTAttention, Fp32TrainingMultiheadAttention} <= kinds
    assert accelerate(model, "cpu", "bfloat16") is model  # again: nothing changes
    fp32_only = accelerate(copy.deepcopy(plain), "cpu", "float32")
    assert Bf16StreamViT not in {type(m) for m in fp32_only.modules()}
    untouched = accelerate(copy.deepcopy(plain), "meta")  # another device: the plain model
    assert {type(m) for m in untouched.modules()} == {type(m) for m in plain.modules()}


def test_an_accelerated_model_copies_pickles_saves_and_predicts_as_the_plain_one():
    plain = _small_detector()
    model = accelerate(copy.deepcopy(plain), "cpu", "bfloat16")
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected, out = plain(images), model(images)
    torch.testing.assert_close(out["pred_logits"], expected["pred_logits"], atol=1e-4, rtol=0)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(buffer, weights_only=False)):
        assert type(twin.transformer.enc_output[0]) is CpuLinear
        with torch.inference_mode():
            torch.testing.assert_close(twin(images)["pred_logits"], out["pred_logits"], atol=0, rtol=0)


class _Boxes(nn.Module):
    """The detector's logits and boxes as a tuple (what the ONNX export records)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor):
        outputs = self.detector(images)
        return outputs["pred_logits"], outputs["pred_boxes"]


def test_an_accelerated_model_exports_the_plain_models_onnx_graph():
    import onnx

    plain = _small_detector()
    plain.aux_loss = False
    grid = 64 // model_config("nano").patch_size
    plain.backbone[0].encoder.encoder.embeddings.bake_position_table(grid, grid)  # as the export does
    model = accelerate(copy.deepcopy(plain), "cpu", "bfloat16")

    def operations(module: nn.Module) -> list[str]:
        buffer = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(_Boxes(module).eval(), (torch.rand(1, 3, 64, 64),), buffer, opset_version=17,
                              dynamo=False)
        return [node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node]

    ops = operations(plain)
    assert "MatMul" in ops or "Gemm" in ops
    assert operations(model) == ops
