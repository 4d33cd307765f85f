"""Which floating-point precision a run computes in, and whether this machine can.

``"fp32"`` everywhere; ``"bf16"`` on CUDA devices with bf16 and on CPUs whose instruction set has
bf16 arithmetic (AVX-512 BF16 or AMX), detected when asked, not assumed; ``"fp16"`` on CUDA only.
``"auto"`` keeps the established behaviour: mixed precision on CUDA (bf16 where supported, else
fp16 with a gradient scaler), fp32 on every other device.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from rfdetr.config import PRECISIONS

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


class PrecisionUnavailable(ValueError):
    """The requested precision cannot run on this device."""


def _first_cpu_field(cpuinfo: Path, keys: tuple[str, ...]) -> str:
    """The value of the first line of ``cpuinfo`` whose key is one of ``keys`` ("" if none or no file)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return ""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags the first CPU of ``cpuinfo`` lists (empty where there is no such file)."""
    return frozenset(_first_cpu_field(cpuinfo, ("flags", "Features")).split())


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first CPU's vendor string, e.g. ``"GenuineIntel"`` or ``"AuthenticAMD"`` ("" where unknown)."""
    return _first_cpu_field(cpuinfo, ("vendor_id",))


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX tiles).

    Without them PyTorch still accepts bf16 tensors on the CPU but emulates the arithmetic, which is
    slower than fp32, so such a CPU counts as having none."""
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast to for ``precision`` on ``device``; None means plain fp32.

    Raises :class:`PrecisionUnavailable` for an explicit request the device cannot honour."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not bf16:
            raise PrecisionUnavailable(f"{device} has no bf16 support: use precision fp16 or fp32")
        if precision == "auto":
            return torch.bfloat16 if bf16 else torch.float16
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "auto":
        return None
    if precision == "fp16":
        raise PrecisionUnavailable(f"fp16 runs on CUDA only, not on {device.type}: use precision bf16 or fp32")
    if device.type != "cpu":
        raise PrecisionUnavailable(f"bf16 is supported on CUDA and CPU, not on {device.type}: use precision fp32")
    if not cpu_has_bf16():
        raise PrecisionUnavailable(
            "this CPU has no native bf16 arithmetic (neither AVX-512 BF16 nor AMX in /proc/cpuinfo's flags), "
            "so bf16 would run slower than fp32: use precision fp32")
    return torch.bfloat16


def autocast_for(device: torch.device, precision: str, amp: bool = True):
    """(autocast context factory, GradScaler or None) for ``precision`` on ``device`` (see
    :func:`rfdetr.util.precision.autocast_dtype`); ``amp=False`` turns ``"auto"`` into fp32."""
    dtype = autocast_dtype("fp32" if precision == "auto" and not amp else precision, device)
    if dtype is None:
        return contextlib.nullcontext, None
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype), scaler


INFERENCE_DTYPES = {"float32": None, "fp32": None, "bfloat16": "bf16", "bf16": "bf16"}


def inference_autocast(dtype: str | torch.dtype, device: torch.device):
    """A context-manager factory for inference in ``dtype`` (``"float32"`` or ``"bfloat16"``) on
    ``device``: plain fp32, or a bf16 autocast (weights stay fp32; matmuls and convolutions run in
    bf16). Raises :class:`PrecisionUnavailable` where the device has no native bf16."""
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(dtype, dtype)
    if name not in INFERENCE_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    lowered = autocast_dtype(INFERENCE_DTYPES[name] or "fp32", device)
    if lowered is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=lowered)
