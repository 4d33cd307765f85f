"""Attention in fp32 under a CPU bf16 autocast.

PyTorch's CPU kernels for bf16 scaled-dot-product attention are slower than its fp32 ones at this
model's shapes (measured with torch 2.14 on AVX-512 BF16 / AMX: the forward about equal, the
backward 2-7x slower; e.g. the decoder's grouped self-attention, 52 x 8 heads x 300 queries x 32,
fwd+bwd 1.16 s in bf16 against 0.65 s in fp32). So under a CPU autocast the attention runs on fp32
inputs with the autocast paused; the matrix products around it stay in bf16. Without a CPU
autocast (fp32 runs, CUDA) the call is unchanged.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def attention_in_fp32_on_cpu(attend: Callable[..., Any], *tensors: torch.Tensor, **kwargs: Any) -> Any:
    """``attend(*tensors, **kwargs)``, on fp32 copies with the autocast paused when a CPU autocast is on."""
    if tensors[0].device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return attend(*tensors, **kwargs)
    with torch.autocast("cpu", enabled=False):
        return attend(*(t.float() for t in tensors), **kwargs)
