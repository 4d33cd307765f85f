"""rfdetr.models.linear.Linear: which inputs take the oneDNN path, and that both paths give F.linear's result.

The routing tests put a recording stand-in where the oneDNN op would be, so they read the same on
a torch build with or without oneDNN.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rfdetr.models import linear
from rfdetr.models.linear import Linear, onednn_linear


def _recording_kernel(monkeypatch) -> list:
    """Install a stand-in for the oneDNN op (it computes F.linear) and return the list of its calls."""
    calls = []

    def kernel(x, weight, bias, attr, scalars, algorithm):
        calls.append({"shape": tuple(x.shape), "contiguous": x.is_contiguous(), "weight": weight, "bias": bias,
                      "post_op": (attr, scalars, algorithm)})
        return F.linear(x, weight, bias)

    monkeypatch.setattr(linear, "_KERNEL", kernel)
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
    with torch.no_grad(), onednn_linear(False):
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
    monkeypatch.setattr(linear, "_KERNEL", None)
    monkeypatch.setattr(linear, "_enabled", False)
    layer = Linear(16, 8)
    x = torch.randn(2, 5, 16)
    expected = F.linear(x, layer.weight, layer.bias)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)
        with onednn_linear(True):  # asking for the fast path cannot switch on a kernel that is not there
            assert not linear._enabled
            torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)


def test_kernel_lookup_honours_the_switch_and_the_build(monkeypatch):
    monkeypatch.setenv("RFDETR_ONEDNN_LINEAR", "0")
    assert linear._onednn_kernel() is None
    monkeypatch.setenv("RFDETR_ONEDNN_LINEAR", "1")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert linear._onednn_kernel() is None


@pytest.mark.parametrize(("vendor", "setting", "onednn"), [
    ("AuthenticAMD", None, True),  # MKL runs at about half oneDNN's rate there
    ("GenuineIntel", None, False),  # MKL is the faster kernel on Intel
    ("", None, True),  # vendor unknown (no /proc/cpuinfo, other architectures)
    ("GenuineIntel", "1", True),
    ("AuthenticAMD", "0", False),
    ("AuthenticAMD", "auto", True),
])
def test_the_kernel_is_chosen_by_cpu_vendor_unless_the_environment_says(monkeypatch, vendor, setting, onednn):
    if setting is None:
        monkeypatch.delenv("RFDETR_ONEDNN_LINEAR", raising=False)
    else:
        monkeypatch.setenv("RFDETR_ONEDNN_LINEAR", setting)
    assert linear._onednn_preferred(vendor) is onednn


def test_this_builds_inference_path_matches_f_linear():
    # Whatever path this torch build takes (oneDNN where present), results differ from F.linear only in
    # float summation order.
    layer = Linear(64, 32)
    x = torch.randn(4, 7, 64)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer(x.transpose(0, 1)), F.linear(x.transpose(0, 1), layer.weight, layer.bias),
                                   atol=1e-5, rtol=1e-5)
