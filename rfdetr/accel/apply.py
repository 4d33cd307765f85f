"""One call that puts a built model on this package's CPU speed paths: :func:`accelerate`."""

from __future__ import annotations

import logging

import torch
from torch import nn

from rfdetr.accel.bf16 import Bf16StreamViT, Fp32TrainingMultiheadAttention, Fp32TrainingViTAttention
from rfdetr.accel.kernels import fp32_kernel
from rfdetr.accel.linear import CpuLinear
from rfdetr.models.backbone.dinov2 import QueryKeyValue, WindowedViT
from rfdetr.models.transformer import DecoderLayer

logger = logging.getLogger(__name__)

_DTYPES = {None: torch.float32, "float32": torch.float32, "fp32": torch.float32, "auto": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _as_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be a torch dtype or one of {', '.join(map(str, _DTYPES))}, got {dtype!r}")
    return _DTYPES[dtype]


def accelerate(model: nn.Module, device: str | torch.device, dtype: str | torch.dtype | None = None) -> nn.Module:
    """Switch ``model``'s modules in place to their CPU-accelerated variants; returns ``model``.

    device: where the model runs; on anything but the CPU nothing changes. dtype: the precision it
    runs in (``float32``/``fp32``/``None``, or ``bfloat16``/``bf16`` for a bf16 autocast). On the CPU
    every ``nn.Linear`` becomes a :class:`~rfdetr.accel.linear.CpuLinear` with this machine's fp32
    kernel (:func:`~rfdetr.accel.kernels.fp32_kernel`); for bf16 the ViT and the decoder's
    self-attention also take the variants of :mod:`rfdetr.accel.bf16`.

    Each module stays the same object with the same parameters and buffers (its class becomes a
    subclass that only overrides ``forward``), so state-dict keys, optimizers built on the model,
    ``deepcopy``, ``pickle`` and ``torch.save`` are unaffected, and tracing or ONNX export records the
    plain layers' operations. Calling it again is harmless.
    """
    if torch.device(device).type != "cpu":
        return model
    lowered = _as_dtype(dtype) == torch.bfloat16
    kernel = fp32_kernel()
    for module in model.modules():
        if type(module) is nn.Linear:
            CpuLinear.adopt(module, kernel)
        elif lowered and type(module) is WindowedViT:
            module.__class__ = Bf16StreamViT
        elif lowered and type(module) is QueryKeyValue:
            module.__class__ = Fp32TrainingViTAttention
        elif lowered and isinstance(module, DecoderLayer) and type(module.self_attn) is nn.MultiheadAttention:
            module.self_attn.__class__ = Fp32TrainingMultiheadAttention
    logger.debug("accelerated %s for the CPU: linear kernel %s, bf16 variants %s", type(model).__name__, kernel,
                 "on" if lowered else "off")
    return model
