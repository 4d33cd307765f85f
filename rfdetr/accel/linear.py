"""``nn.Linear`` with the CPU inference kernels of :mod:`rfdetr.accel.kernels` and cached weight copies.

:class:`CpuLinear` is ``nn.Linear`` with another ``forward``: same parameters, same state-dict keys.
:func:`rfdetr.accel.accelerate` turns a model's ``nn.Linear`` layers into it in place.

- fp32 inference on the CPU (no autograd recording, no CPU autocast, 2-D or 3-D input) runs the
  layer's ``kernel``: ``"mkl"`` (MKL's sgemm with the weight packed once per row count, kept for the
  last :data:`PACKED_ROW_COUNTS` row counts), ``"onednn"`` or ``"aten"`` (``F.linear``).
- Inference under a CPU bf16 autocast uses a bf16 copy of weight and bias, made on first use and
  remade when either changes (the autocast alone casts every weight on every forward), on oneDNN with
  the bias fused where oneDNN computes bf16 (CPUs with AVX-512), else on ``F.linear``.
- Everything else (training, other devices, tracing, ONNX export, ``torch.compile``) is ``F.linear``,
  so an exported or traced model records ``aten::linear`` as the plain layer does.

The cached tensors live in a :class:`DerivedTensors` table, never copied or pickled (a copy rebuilds its
own; MKL's packed weights cannot be deep-copied at all). Thread safety: each entry is published whole
(a new table or tuple, never changed after it is stored), so readers take no lock; writers hold the
table's lock so that no update is lost.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.accel.kernels import onednn_computes_bf16, onednn_linear_op

PACKED_ROW_COUNTS = 2  # packed weights kept per layer (e.g. one batch size for predict, one for validation)


def recording_a_graph() -> bool:
    """Whether a tracer, scripter, ONNX exporter or compiler is recording this call (they need aten::linear)."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


def _version_key(p: torch.Tensor) -> tuple:
    # An inference tensor has no version counter; it can change in place only inside inference mode.
    return (None if p.is_inference() else p._version, p.data_ptr(), p.device, p.dtype)


class DerivedTensors(dict):
    """A layer's tensors derived from its parameters (packed or cast weights), with the writers' lock."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> "DerivedTensors":
        return DerivedTensors()

    def __reduce__(self):
        return DerivedTensors, ()


class CpuLinear(nn.Linear):
    """``nn.Linear`` whose CPU inference runs ``kernel`` and reuses cast weights (see the module doc)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, kernel: str = "aten", **kwargs):
        super().__init__(in_features, out_features, bias, **kwargs)
        self.kernel = kernel
        self.derived_tensors = DerivedTensors()

    @classmethod
    def adopt(cls, layer: nn.Linear, kernel: str) -> "CpuLinear":
        """Make ``layer`` (an ``nn.Linear``) a :class:`CpuLinear` in place: the same object and parameters."""
        layer.__class__ = cls
        layer.kernel = kernel
        layer.derived_tensors = DerivedTensors()
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or recording_a_graph():
            return F.linear(x, self.weight, self.bias)
        if torch.is_autocast_enabled("cpu"):
            if torch.is_grad_enabled():
                return F.linear(x, self.weight, self.bias)  # training: the autocast casts, autograd records
            lowered = torch.get_autocast_dtype("cpu")
            weight, bias = self._lowered_parameters(lowered)
            if lowered == torch.bfloat16 and self.kernel != "aten" and 2 <= x.dim() <= 3 and onednn_computes_bf16():
                return onednn_linear_op()(x.to(lowered).contiguous(), weight, bias, "none", [], "")  # bias fused
            return F.linear(x, weight, bias)
        if self._fp32_kernel_applies(x):
            x = x.contiguous()
            if self.kernel == "mkl":
                rows = x.numel() // x.shape[-1]
                return torch.ops.mkl._mkl_linear(x, self._packed_weight(rows), self.weight, self.bias, rows)
            return onednn_linear_op()(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def _fp32_kernel_applies(self, x: torch.Tensor) -> bool:
        if self.kernel == "aten" or x.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return False  # neither op has a backward
        return 2 <= x.dim() <= 3

    def _packed_weight(self, rows: int) -> torch.Tensor:
        """The weight packed by MKL for products with ``rows`` rows, packed again when it changes."""
        key = _version_key(self.weight)
        derived = self.derived_tensors
        entry = derived.get("packed", {}).get(rows)
        if entry is not None and entry[0] == key:
            return entry[1]
        packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight.detach(), rows)
        with derived.lock:  # publish a new table: readers of the old one are undisturbed
            table = {count: kept for count, kept in derived.get("packed", {}).items() if count != rows}
            kept_counts = list(table)[max(0, len(table) - (PACKED_ROW_COUNTS - 1)):]  # drop the oldest
            derived["packed"] = {**{count: table[count] for count in kept_counts}, rows: (key, packed)}
        return packed

    def _lowered_parameters(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias cast to ``dtype``: cast once, reused until either changes (in place, as a load,
        an optimizer step or an EMA update does, or by being moved or replaced)."""
        key = (dtype, *(_version_key(p) for p in (self.weight, self.bias) if p is not None))
        derived = self.derived_tensors
        cached = derived.get("lowered")  # one (key, tensors) tuple, replaced whole
        if cached is None or cached[0] != key:
            bias = None if self.bias is None else self.bias.detach().to(dtype)
            cached = (key, (self.weight.detach().to(dtype), bias))
            with derived.lock:
                derived["lowered"] = cached
        return cached[1]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}"
