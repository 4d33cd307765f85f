"""rfdetr.models.linear.Linear: which inputs take the fast CPU paths (oneDNN, packed MKL, bf16 copies),
which kernel a CPU gets, and that every path gives F.linear's result.

The routing tests put a recording stand-in where the oneDNN op would be, so they read the same on
a torch build with or without oneDNN.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from rfdetr.models import linear
from rfdetr.models.linear import Linear, choose_kernel, fast_linear


def _recording_kernel(monkeypatch) -> list:
    """Install a stand-in for the oneDNN op (it computes F.linear) and return the list of its calls."""
    calls = []

    def kernel(x, weight, bias, attr, scalars, algorithm):
        calls.append({"shape": tuple(x.shape), "contiguous": x.is_contiguous(), "weight": weight, "bias": bias,
                      "post_op": (attr, scalars, algorithm)})
        return F.linear(x, weight, bias)

    monkeypatch.setattr(linear, "ONEDNN_OP", kernel)
    monkeypatch.setattr(linear, "_KERNEL", "onednn")
    monkeypatch.setattr(linear, "_enabled", True)
    return calls


def test_cpu_float32_inference_goes_to_the_kernel_with_contiguous_input(monkeypatch):
    calls = _recording_kernel(monkeypatch)
    layer = Linear(16, 8)
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        out = layer(x)
        out_t = layer(x.transpose(0, 1))  # non-contiguous input
        layer(x[0])  # 2-D input
    assert [c["shape"] for c in calls] == [(2, 5, 16), (5, 2, 16), (5, 16)]
    assert all(c["contiguous"] for c in calls)  # the op needs contiguous memory: Linear copies first
    assert all(c["weight"] is layer.weight and c["bias"] is layer.bias for c in calls)
    assert all(c["post_op"] == ("none", [], "") for c in calls)  # no fused activation
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), atol=0, rtol=0)
    torch.testing.assert_close(out_t, F.linear(x.transpose(0, 1), layer.weight, layer.bias), atol=0, rtol=0)


def test_training_tracing_other_dtypes_and_shapes_use_f_linear(monkeypatch):
    calls = _recording_kernel(monkeypatch)
    layer = Linear(16, 8)
    x = torch.randn(3, 16)
    layer(x).sum().backward()  # autograd needs F.linear (the op has no backward)
    assert layer.weight.grad is not None
    with torch.no_grad(), fast_linear(False):
        layer(x)
    with torch.no_grad():
        layer(x[None, None])  # 4-D input
        layer.double()(x.double())  # float64
        layer.float()
        traced = torch.jit.trace(layer, x, check_trace=False)  # tracing (ONNX export) must record aten::linear
    assert "linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)
    assert calls == []
    with torch.no_grad():
        layer(x)  # and the fast path is still on afterwards
    assert len(calls) == 1
    assert isinstance(layer, torch.nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}


def test_without_the_kernel_every_call_uses_f_linear(monkeypatch):
    # A torch build without oneDNN: the module state is what import leaves then.
    monkeypatch.setattr(linear, "ONEDNN_OP", None)
    monkeypatch.setattr(linear, "_KERNEL", "aten")
    monkeypatch.setattr(linear, "_enabled", False)
    layer = Linear(16, 8)
    x = torch.randn(2, 5, 16)
    expected = F.linear(x, layer.weight, layer.bias)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)
        with fast_linear(True):  # asking for the fast path cannot switch on a kernel that is not there
            assert not linear._enabled
            torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize(("vendor", "setting", "available", "kernel"), [
    ("AuthenticAMD", None, "mkl onednn", "onednn"),  # MKL runs at about half oneDNN's rate there
    ("GenuineIntel", None, "mkl onednn", "mkl"),  # MKL is the faster kernel on Intel
    ("", None, "mkl onednn", "onednn"),  # vendor unknown (no /proc/cpuinfo, other architectures)
    ("GenuineIntel", "onednn", "mkl onednn", "onednn"),
    ("AuthenticAMD", "mkl", "mkl onednn", "mkl"),
    ("AuthenticAMD", "aten", "mkl onednn", "aten"),
    ("AuthenticAMD", "auto", "mkl onednn", "onednn"),
    ("AuthenticAMD", "fastest", "mkl onednn", "onednn"),  # not a setting: a warning and auto
    ("GenuineIntel", None, "onednn", "onednn"),  # a build without MKL takes the other kernel
    ("AuthenticAMD", None, "mkl", "mkl"),
    ("AuthenticAMD", None, "", "aten"),
])
def test_the_kernel_is_chosen_by_cpu_vendor_and_build_unless_the_environment_says(monkeypatch, vendor, setting,
                                                                                   available, kernel):
    if setting is None:
        monkeypatch.delenv("RFDETR_CPU_LINEAR", raising=False)
    else:
        monkeypatch.setenv("RFDETR_CPU_LINEAR", setting)
    assert choose_kernel(vendor, {name: True for name in available.split()}) == kernel


def test_packed_mkl_path_is_bit_identical_and_repacks_when_the_weight_changes(monkeypatch):
    monkeypatch.setattr(linear, "_KERNEL", "mkl")
    monkeypatch.setattr(linear, "_enabled", True)
    layer = Linear(64, 32)
    x = torch.randn(3, 7, 64)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=0, rtol=0)
        torch.testing.assert_close(layer(x.transpose(0, 1)), F.linear(x.transpose(0, 1), layer.weight, layer.bias),
                                   atol=0, rtol=0)
        layer(x[0]), layer(x[:2])
    assert list(layer._derived()["packed"]) == [7, 14]  # the last two row counts (21 was dropped)
    layer.load_state_dict({"weight": torch.randn(32, 64), "bias": torch.randn(32)})  # an in-place copy
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=0, rtol=0)
    twin = pickle.loads(pickle.dumps(copy.deepcopy(layer)))  # packed weights cannot be copied: rebuilt instead
    assert twin._derived() == {}
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), F.linear(x, layer.weight, layer.bias), atol=0, rtol=0)


def test_bf16_inference_casts_the_weights_once_and_again_after_a_change():
    layer = Linear(64, 32)
    x = torch.randn(3, 7, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.linear(x, layer.weight, layer.bias)
        with torch.inference_mode():
            out = layer(x)
            first = layer._derived()["lowered"][1][0]
            layer(x)
            assert layer._derived()["lowered"][1][0] is first  # reused, not cast again
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


def test_this_builds_inference_path_matches_f_linear():
    # Whatever path this torch build takes (oneDNN where present), results differ from F.linear only in
    # float summation order.
    layer = Linear(64, 32)
    x = torch.randn(4, 7, 64)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer(x.transpose(0, 1)), F.linear(x.transpose(0, 1), layer.weight, layer.bias),
                                   atol=1e-5, rtol=1e-5)
