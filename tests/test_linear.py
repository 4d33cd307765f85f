"""The oneDNN inference path of rfdetr.models.linear.Linear: same results, used only where it may be."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rfdetr.models import linear
from rfdetr.models.linear import Linear, onednn_linear



def _calls(monkeypatch) -> list:
    calls = []
    kernel = linear._KERNEL

    def counting(*args):
        calls.append(args[0].shape)
        return kernel(*args)

    monkeypatch.setattr(linear, "_KERNEL", counting)
    return calls


def test_inference_uses_onednn_and_matches_f_linear(monkeypatch):
    assert linear._KERNEL is not None  # this project's torch builds have oneDNN
    calls = _calls(monkeypatch)
    layer = Linear(16, 8)
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        fast = layer(x)
        fast_t = layer(x.transpose(0, 1))  # non-contiguous input
    assert len(calls) == 2
    torch.testing.assert_close(fast, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_t, F.linear(x.transpose(0, 1), layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_training_export_and_switch_use_f_linear(monkeypatch):
    calls = _calls(monkeypatch)
    layer = Linear(16, 8)
    x = torch.randn(3, 16)
    layer(x).sum().backward()  # autograd needs F.linear
    assert layer.weight.grad is not None
    with torch.no_grad(), onednn_linear(False):
        layer(x)
    with torch.no_grad():
        layer(x)  # the fast path
        traced = torch.jit.trace(layer, x, check_trace=False)  # tracing (ONNX export) must record aten::linear
    assert "linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)
    assert len(calls) == 1
    assert isinstance(layer, torch.nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}
