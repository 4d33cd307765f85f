"""Reference implementation of the deterministic weight fill the goldens were made with.

Every value depends only on (seed, state-dict key, shape, dtype). The reference data's
fill_weights.py without its module docstring and self-check, copied by tools/trim_goldens.py;
tests/test_weight_fill.py checks rfdetr/util/weight_fill.py against it.
"""

import hashlib
import math

import torch

# Overrides by the last component of the key (after the last '.'), or the
# whole-key suffix for the two query embeddings.  (offset, scale): value = offset + scale * z
SPECIAL = {
    "lambda1": (0.1, 0.02),              # DINOv2 layer scale (layer_scale1/2)
    "cls_token": (0.0, 0.5),
    "register_tokens": (0.0, 0.5),
    "mask_token": (0.0, 0.5),
    "position_embeddings": (0.0, 0.5),   # DINOv2 absolute position embeddings
}
SUFFIX = {
    "query_feat.weight": (0.0, 1.0),     # decoder content queries (nn.Embedding)
    "refpoint_embed.weight": (0.0, 0.1), # box deltas applied to two-stage proposals
}


def key_seed(seed: int, key: str) -> int:
    """First 8 hex digits of sha256(f"{seed}:{key}") as an integer (0 .. 2**32-1)."""
    return int(hashlib.sha256(f"{seed}:{key}".encode("utf-8")).hexdigest()[:8], 16)


def standard_normal(seed: int, key: str, shape) -> torch.Tensor:
    """z ~ N(0,1), float32, CPU, drawn by torch.randn from a generator seeded by key_seed."""
    g = torch.Generator(device="cpu")
    g.manual_seed(key_seed(seed, key))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32)


def rule_for(key: str, shape) -> tuple:
    """(offset, scale) so that value = z * scale + offset (running_var is handled in fill_tensor)."""
    name = key.rsplit(".", 1)[-1]
    for suffix, rule in SUFFIX.items():
        if key == suffix or key.endswith("." + suffix):
            return rule
    if name in SPECIAL:
        return SPECIAL[name]
    if name == "running_mean":
        return (0.0, 0.1)
    if len(shape) >= 2:  # Linear / Conv / ConvTranspose / MHA in_proj weights, embeddings
        fan_in = math.prod(shape[1:])
        return (0.0, 1.0 / math.sqrt(fan_in))
    if name.endswith("weight"):  # 1-D weight = normalisation scale (LayerNorm, BatchNorm, RMSNorm)
        return (1.0, 0.02)
    return (0.0, 0.02)  # biases (incl. in_proj_bias) and any other 0-D/1-D float tensor


def fill_tensor(seed: int, key: str, t: torch.Tensor) -> torch.Tensor:
    if not t.is_floating_point():
        return t.clone()  # integer / bool buffers (e.g. num_batches_tracked) stay as they are
    z = standard_normal(seed, key, t.shape)
    if key.rsplit(".", 1)[-1] == "running_var":  # BatchNorm variance must stay positive
        v = 1.0 + 0.1 * z.abs()
    else:
        offset, scale = rule_for(key, t.shape)
        v = z * scale + offset
    return v.to(dtype=t.dtype, device=t.device)


def fill_state_dict(state_dict, seed: int = 0) -> dict:
    """Return a new dict {key: filled tensor} with the same keys, shapes, dtypes and devices."""
    return {k: fill_tensor(seed, k, v) for k, v in state_dict.items()}


def state_dict_sha256(state_dict) -> str:
    """sha256 over the keys in sorted order: utf-8 key bytes, then the tensor's raw (little-endian) bytes.
    (Needs numpy for the byte view; filling itself does not.)"""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode("utf-8"))
        h.update(state_dict[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
