"""``nn.Linear`` with faster CPU inference paths.

fp32: PyTorch's ``F.linear`` runs MKL's sgemm on x86 CPUs. MKL is tuned for Intel CPUs; on others
(e.g. AMD EPYC) it runs at about half the rate oneDNN reaches for the same product. So CPU fp32
inference (no autograd recording, no CPU autocast, not tracing, exporting or compiling) goes to

- ``"mkl"`` on Intel CPUs: MKL's sgemm with the weight packed once for the call's row count (kept for
  the last two row counts seen), bit-identical to ``F.linear`` and 7-20% faster per product than the
  unpacked call at this model's shapes (full nano forward 6%, base 3%; ``F.linear`` itself is 8-9%
  faster there than oneDNN);
- ``"onednn"`` elsewhere: oneDNN's linear op (results differ from ``F.linear`` only in float
  summation order, ~1e-6);

and everything else to ``F.linear``. ``RFDETR_CPU_LINEAR`` in the environment (``auto``, ``mkl``,
``onednn`` or ``aten`` for plain ``F.linear``) overrides the choice by vendor; a kernel this torch
build lacks falls back to the other, then to ``F.linear``. :func:`fast_linear` switches the fp32
paths off for a block of code (the benchmark does, to count FLOPs with torch's FLOP counter).

bf16: under a CPU bf16 autocast without gradients (``dtype="bfloat16"`` inference, validation of a
bf16 run) :class:`Linear` keeps a bf16 copy of its weight and bias, made on first use and remade
when either changes, and computes on oneDNN with the bias fused: the autocast alone would cast
every weight on every forward, and ``addmm`` first copies the bias into its output. (Where oneDNN
has no bf16 kernel, on CPUs without AVX-512, the bf16 copies go to ``F.linear``.)

Same parameters and state-dict keys as ``nn.Linear``; the cached copies are plain attributes, made
by the layer itself (a copy of the layer makes its own) and safe to fill from many threads at once:
a cache table is replaced, never changed, so a reader needs no lock, and a lock serialises the writers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.models.cpu_precision import inference_autocast_dtype
from rfdetr.util.precision import cpu_vendor

logger = logging.getLogger(__name__)

KERNELS = ("mkl", "onednn", "aten")
PACKED_ROW_COUNTS = 2  # packed weights kept per layer (e.g. one batch size for predict, one for validation)


def _onednn_op():
    """oneDNN's linear op if this torch build has it, else None."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without the op
        return None


def _onednn_computes_bf16(op) -> bool:
    """Whether oneDNN's linear op runs in bf16 here (it has no bf16 kernel on CPUs without AVX-512)."""
    if op is None:
        return False
    try:
        op(torch.ones(1, 1, dtype=torch.bfloat16), torch.ones(1, 1, dtype=torch.bfloat16), None, "none", [], "")
    except RuntimeError:  # "could not create a primitive descriptor for the inner product"
        return False
    return True


def _mkl_ops_available() -> bool:
    if not torch.backends.mkl.is_available():
        return False
    try:
        return torch.ops.mkl._mkl_linear is not None and torch.ops.mkl._mkl_reorder_linear_weight is not None
    except (AttributeError, RuntimeError):
        return False


def choose_kernel(vendor: str, available: dict[str, bool]) -> str:
    """The fp32 kernel for a CPU of ``vendor`` given which kernels this build has (see the module doc)."""
    setting = os.environ.get("RFDETR_CPU_LINEAR", "auto")
    if setting not in ("auto", *KERNELS):
        logger.warning("RFDETR_CPU_LINEAR=%s is not one of auto, %s; using auto", setting, ", ".join(KERNELS))
        setting = "auto"
    if setting == "auto":
        setting = "mkl" if vendor == "GenuineIntel" else "onednn"
    if setting == "aten":
        return "aten"
    other = "onednn" if setting == "mkl" else "mkl"
    return next((kernel for kernel in (setting, other) if available.get(kernel)), "aten")


ONEDNN_OP = _onednn_op()
ONEDNN_BF16 = _onednn_computes_bf16(ONEDNN_OP)
_KERNEL = choose_kernel(cpu_vendor(), {"onednn": ONEDNN_OP is not None, "mkl": _mkl_ops_available()})
_enabled = _KERNEL != "aten"


@contextlib.contextmanager
def fast_linear(enabled: bool) -> Iterator[None]:
    """Temporarily switch the fp32 fast path on (where this build has a kernel for it) or off."""
    global _enabled
    previous = _enabled
    _enabled = enabled and _KERNEL != "aten"
    try:
        yield
    finally:
        _enabled = previous


def _recording_a_graph() -> bool:
    """Whether a tracer, scripter, ONNX exporter or compiler is recording this call (they need aten::linear)."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


def _fast_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not _enabled or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # neither op has a backward
    if torch.is_autocast_enabled("cpu"):
        return False  # F.linear follows the autocast dtype; these ops would compute in fp32
    return not _recording_a_graph() and 2 <= x.dim() <= 3


def _version_key(p: torch.Tensor) -> tuple:
    # An inference tensor has no version counter; it can change in place only inside inference mode.
    return (None if p.is_inference() else p._version, p.data_ptr(), p.device, p.dtype)


class _Derived(dict):
    """A layer's tensors derived from its parameters (packed or cast weights). Never copied or pickled:
    a copy rebuilds its own on first use (MKL's packed weights cannot be deep-copied at all).

    Thread safety: each entry is published whole (a new table or tuple, never changed after it is
    stored), so readers take no lock; writers hold :attr:`lock` so that no update is lost."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> "_Derived":
        return _Derived()

    def __reduce__(self):
        return _Derived, ()


class Linear(nn.Linear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._derived_tensors = _Derived()  # made here, not during a forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast_path(x, self.weight):
            x = x.contiguous()
            if _KERNEL == "mkl":
                rows = x.numel() // x.shape[-1]
                return torch.ops.mkl._mkl_linear(x, self._packed_weight(rows), self.weight, self.bias, rows)
            return ONEDNN_OP(x, self.weight, self.bias, "none", [], "")
        lowered = inference_autocast_dtype(x)
        if lowered is not None and not _recording_a_graph():
            weight, bias = self._lowered_parameters(lowered)
            if ONEDNN_BF16 and _KERNEL != "aten" and 2 <= x.dim() <= 3:
                return ONEDNN_OP(x.to(lowered).contiguous(), weight, bias, "none", [], "")  # bias fused
            return F.linear(x, weight, bias)
        return F.linear(x, self.weight, self.bias)

    def _packed_weight(self, rows: int) -> torch.Tensor:
        """The weight packed by MKL for products with ``rows`` rows, packed again when it changes."""
        key = _version_key(self.weight)
        derived = self._derived()
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
        derived = self._derived()
        cached = derived.get("lowered")  # one (key, tensors) tuple, replaced whole
        if cached is None or cached[0] != key:
            bias = None if self.bias is None else self.bias.detach().to(dtype)
            cached = (key, (self.weight.detach().to(dtype), bias))
            with derived.lock:
                derived["lowered"] = cached
        return cached[1]

    def _derived(self) -> _Derived:
        # A plain attribute: not a parameter or buffer, so not in the state dict. Made with the layer
        # (see __init__); setdefault (atomic) covers a layer made without __init__, e.g. by unpickling.
        derived = self.__dict__.get("_derived_tensors")
        return derived if derived is not None else self.__dict__.setdefault("_derived_tensors", _Derived())
