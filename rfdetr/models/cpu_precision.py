"""Attention under a CPU bf16 autocast: fp32 where autograd records, bf16 for inference.

PyTorch's CPU kernels for bf16 scaled-dot-product attention have a slow backward at this model's
shapes (measured with torch 2.14 on AVX-512 BF16 / AMX: 2-7x slower than fp32; e.g. the decoder's
grouped self-attention, 52 x 8 heads x 300 queries x 32, fwd+bwd 1.16 s in bf16 against 0.65 s in
fp32), while their forward is the faster one wherever the sequences are long (ViT-S global
attention over 1,616 tokens 2.9x, over 577 tokens 2.5x, 101-token windows 1.2x; 37-token windows
0.86x). So while autograd records, the attention runs on fp32 inputs with the autocast paused (the
matrix products around it stay in bf16); without gradients it runs in the autocast's bf16. Without
a CPU autocast (fp32 runs, CUDA) the call is unchanged.

For inference under a CPU bf16 autocast the ViT also carries its residual stream in bf16
(:func:`inference_autocast_dtype`), and :class:`rfdetr.models.linear.Linear` keeps a bf16 copy of its
weights: the autocast would otherwise cast every weight on every forward, and every fp32 activation
once per consumer (three times for query, key and value).
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def attention_under_cpu_autocast(attend: Callable[..., Any], *tensors: torch.Tensor, **kwargs: Any) -> Any:
    """``attend(*tensors, **kwargs)``; on fp32 copies with the autocast paused when a CPU autocast is on
    and autograd is recording."""
    if (tensors[0].device.type != "cpu" or not torch.is_autocast_enabled("cpu")
            or not torch.is_grad_enabled()):
        return attend(*tensors, **kwargs)
    with torch.autocast("cpu", enabled=False):
        return attend(*(t.float() for t in tensors), **kwargs)


def inference_autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The CPU autocast's low-precision dtype when ``x`` is a CPU tensor under a CPU autocast with autograd
    off (inference), else None."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or torch.is_grad_enabled():
        return None
    return torch.get_autocast_dtype("cpu")
