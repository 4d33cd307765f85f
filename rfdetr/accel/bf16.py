"""Variants of the ViT and of the decoder's self-attention for a CPU bf16 autocast.

Training: PyTorch's CPU kernels for bf16 scaled-dot-product attention have a slow backward at this
model's shapes (torch 2.14 on an Intel Xeon with AVX-512 BF16 and AMX: 2-7x slower than fp32; e.g.
the decoder's grouped self-attention, 52 x 8 heads x 300 queries x 32, forward + backward 1.16 s in
bf16 against 0.65 s in fp32). So while autograd records under a CPU autocast, attention runs on fp32
inputs with the autocast paused (the matrix products around it stay bf16): nano's bf16 training step
went from 1.37x to 1.76x fp32's speed (192 px, batch 4, same CPU). Without gradients the attention
stays in bf16, whose forward is the faster one over long sequences (2.5-2.9x over the ViT's global
attention).

Inference: :class:`Bf16StreamViT` carries the residual stream in the autocast's dtype, one cast after
the embeddings instead of one per consumer (query, key, value, ...) in every block.

Each class subclasses the plain module and changes no parameter; :func:`rfdetr.accel.accelerate`
switches a model's modules to them in place for ``dtype=bfloat16`` on the CPU.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from rfdetr.models.backbone.dinov2 import QueryKeyValue, WindowedViT


def attention_under_cpu_autocast(attend: Callable[..., Any], *tensors: torch.Tensor, **kwargs: Any) -> Any:
    """``attend(*tensors, **kwargs)``; on fp32 copies with the autocast paused when a CPU autocast is on
    and autograd is recording."""
    if (tensors[0].device.type != "cpu" or not torch.is_autocast_enabled("cpu")
            or not torch.is_grad_enabled()):
        return attend(*tensors, **kwargs)
    with torch.autocast("cpu", enabled=False):
        return attend(*(t.float() for t in tensors), **kwargs)


def inference_autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The CPU autocast's dtype when ``x`` is a CPU tensor under a CPU autocast with autograd off, else None."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or torch.is_grad_enabled():
        return None
    return torch.get_autocast_dtype("cpu")


class Fp32TrainingViTAttention(QueryKeyValue):
    """The ViT's attention, in fp32 while autograd records under a CPU autocast."""

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return attention_under_cpu_autocast(super().attend, query, key, value)


class Fp32TrainingMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (the decoder's self-attention), in fp32 while autograd records under a
    CPU autocast."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: Any):
        return attention_under_cpu_autocast(super().forward, query, key, value, **kwargs)


class Bf16StreamViT(WindowedViT):
    """The windowed ViT with its residual stream in the CPU autocast's dtype during inference."""

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.embeddings(images)
        stream_dtype = inference_autocast_dtype(x)
        if stream_dtype is not None:
            x = x.to(stream_dtype)
        return self.run_blocks(x)
