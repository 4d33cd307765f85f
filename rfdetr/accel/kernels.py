"""Which CPU matrix-product kernels this torch build has, and which one the fp32 linear layers take.

CPU fp32 inference takes

- ``"mkl"`` on Intel CPUs: MKL's sgemm with the weight packed once per row count, bit-identical to
  ``F.linear`` (measured faster there: docs/benchmarks.md);
- ``"aten"`` (plain ``F.linear``) elsewhere: on an AMD EPYC neither packed MKL nor oneDNN's linear op
  made the whole forward faster (docs/benchmarks.md).

``RFDETR_CPU_LINEAR`` (``auto``, ``mkl``, ``onednn`` for oneDNN's linear op, or ``aten``) overrides the
choice by vendor; a kernel this build lacks falls back to the other, then to ``F.linear``.

The kernels are private ops (``torch.ops.mkldnn._linear_pointwise``, ``torch.ops.mkl._mkl_linear``,
``torch.ops.mkl._mkl_reorder_linear_weight``); tests/test_accel.py checks that each exists and gives
``F.linear``'s result, so a torch release that changes them fails the tests instead of the user.
Everything is probed on first use, not at import.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from rfdetr.util.precision import cpu_vendor

logger = logging.getLogger(__name__)

KERNELS = ("mkl", "onednn", "aten")


@functools.cache
def onednn_linear_op():
    """oneDNN's linear op ``(x, weight, bias, attr, scalars, algorithm)`` if this build has it, else None."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without the op
        return None


@functools.cache
def onednn_computes_bf16() -> bool:
    """Whether oneDNN's linear op runs in bf16 here (it has no bf16 kernel on CPUs without AVX-512)."""
    op = onednn_linear_op()
    if op is None:
        return False
    one = torch.ones(1, 1, dtype=torch.bfloat16)
    try:
        op(one, one, None, "none", [], "")
    except RuntimeError:  # "could not create a primitive descriptor for the inner product"
        return False
    return True


@functools.cache
def mkl_linear_ops_available() -> bool:
    """Whether this build has MKL's packed linear ops."""
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
        setting = "mkl" if vendor == "GenuineIntel" else "aten"
    if setting == "aten":
        return "aten"
    other = "onednn" if setting == "mkl" else "mkl"
    return next((kernel for kernel in (setting, other) if available.get(kernel)), "aten")


def fp32_kernel() -> str:
    """This machine's fp32 kernel: ``"mkl"``, ``"onednn"`` or ``"aten"`` (plain ``F.linear``)."""
    return choose_kernel(cpu_vendor(), {"onednn": onednn_linear_op() is not None,
                                        "mkl": mkl_linear_ops_available()})
