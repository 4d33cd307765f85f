"""Deterministic, implementation-independent weights for tests, demos and benchmarks.

A value depends only on ``(seed, state-dict key, shape, dtype)``, so any model with the published
checkpoint keys gets the same weights without any weight file. This is the project's rule for
reproducible offline models (the golden reference outputs were produced with it):

- per key, ``z ~ N(0, 1)`` float32 from a CPU generator seeded with the first 8 hex digits of
  ``sha256(f"{seed}:{key}")``; value = ``z * scale + offset``, cast to the tensor's dtype;
- ``(offset, scale)``: query content embeddings (0, 1); query box deltas (0, 0.1); ViT layer
  scale (0.1, 0.02); ViT tokens and position table (0, 0.5); BatchNorm running mean (0, 0.1) and
  running variance ``1 + 0.1 |z|``; any >= 2-D tensor (0, 1/sqrt(fan_in)) with fan_in the product
  of all but the first dimension; other 1-D ``*weight`` (normalisation scales) (1, 0.02);
  everything else, biases included, (0, 0.02); integer buffers are kept.
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping

import torch

_BY_KEY_SUFFIX = {"query_feat.weight": (0.0, 1.0), "refpoint_embed.weight": (0.0, 0.1)}
_BY_NAME = {
    "lambda1": (0.1, 0.02),
    "cls_token": (0.0, 0.5),
    "register_tokens": (0.0, 0.5),
    "mask_token": (0.0, 0.5),
    "position_embeddings": (0.0, 0.5),
    "running_mean": (0.0, 0.1),
}


def _generator_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}:{key}".encode("utf-8")).hexdigest()[:8], 16)


def _offset_and_scale(key: str, shape: torch.Size) -> tuple[float, float]:
    for suffix, rule in _BY_KEY_SUFFIX.items():
        if key == suffix or key.endswith("." + suffix):
            return rule
    name = key.rsplit(".", 1)[-1]
    if name in _BY_NAME:
        return _BY_NAME[name]
    if len(shape) >= 2:
        return 0.0, 1.0 / math.sqrt(math.prod(shape[1:]))
    if name.endswith("weight"):
        return 1.0, 0.02
    return 0.0, 0.02


def filled_tensor(seed: int, key: str, like: torch.Tensor) -> torch.Tensor:
    """The deterministic value of ``key`` for a tensor shaped like ``like``."""
    if not like.is_floating_point():
        return like.clone()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(_generator_seed(seed, key))
    z = torch.randn(tuple(like.shape), generator=generator, dtype=torch.float32)
    if key.rsplit(".", 1)[-1] == "running_var":
        value = 1.0 + 0.1 * z.abs()
    else:
        offset, scale = _offset_and_scale(key, like.shape)
        value = z * scale + offset
    return value.to(dtype=like.dtype, device=like.device)


def filled_state_dict(state_dict: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """A new state dict with the same keys, shapes, dtypes and devices, filled deterministically."""
    return {key: filled_tensor(seed, key, value) for key, value in state_dict.items()}


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted keys: each key's utf-8 bytes, then the tensor's raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode("utf-8"))
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fill_model_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every state-dict entry of ``model`` deterministically, in place, and return it.

    One tensor at a time (no second copy of the weights), so peak memory stays at the model's own.
    """
    with torch.no_grad():
        for key, value in model.state_dict(keep_vars=True).items():
            value.copy_(filled_tensor(seed, key, value))
    return model
