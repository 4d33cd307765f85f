"""Which device a model runs on when none is named: CUDA, else Apple's MPS, else the CPU."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a device, or :func:`default_device` for ``None``."""
    return torch.device(name) if name else default_device()
