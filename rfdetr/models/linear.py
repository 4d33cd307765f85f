"""``nn.Linear`` with a faster CPU inference path.

On x86 CPUs PyTorch's fp32 ``F.linear`` goes through MKL's sgemm. MKL is tuned for Intel CPUs: on
others (e.g. AMD EPYC) it runs at about half the rate oneDNN reaches for the same product, while on
Intel Xeons it is the faster of the two (full nano and base forwards 8-9% faster than with oneDNN,
measured with torch 2.14, 2 threads). So on a CPU that is not Intel's, :class:`Linear` sends CPU
fp32 inference (no autograd recording, no CPU autocast, not tracing/exporting) to oneDNN's linear
kernel, and everything else to ``F.linear``. Same parameters and state-dict keys as ``nn.Linear``;
results differ from ``F.linear`` only in float summation order (~1e-6).

``RFDETR_ONEDNN_LINEAR`` in the environment overrides the choice by vendor: ``1`` uses oneDNN on
any CPU, ``0`` never; :func:`onednn_linear` does the same for a block of code (the benchmark
switches the path off to count FLOPs with torch's FLOP counter).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.util.precision import cpu_vendor


def _onednn_kernel():
    """oneDNN's linear op if this torch build has it, else None."""
    if os.environ.get("RFDETR_ONEDNN_LINEAR", "1") == "0" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without the op
        return None


def _onednn_preferred(vendor: str) -> bool:
    """Whether the oneDNN path is on by default on a CPU of ``vendor`` (see the module doc)."""
    setting = os.environ.get("RFDETR_ONEDNN_LINEAR", "auto")
    if setting in ("0", "1"):
        return setting == "1"
    return vendor != "GenuineIntel"


_KERNEL = _onednn_kernel()
_enabled = _KERNEL is not None and _onednn_preferred(cpu_vendor())


@contextlib.contextmanager
def onednn_linear(enabled: bool) -> Iterator[None]:
    """Temporarily switch the oneDNN path on (if available) or off."""
    global _enabled
    previous = _enabled
    _enabled = enabled and _KERNEL is not None
    try:
        yield
    finally:
        _enabled = previous


def _fast_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not _enabled or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # the oneDNN op has no backward
    if torch.is_autocast_enabled("cpu"):
        return False  # F.linear follows the autocast dtype; the oneDNN op would compute in fp32
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling()) and 2 <= x.dim() <= 3


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast_path(x, self.weight):
            return _KERNEL(x.contiguous(), self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)
