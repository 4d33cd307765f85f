"""Our weight-fill module implements the reference rule bit for bit."""

from __future__ import annotations

import torch
from conftest import reference_fill_module

from rfdetr.util.weight_fill import filled_state_dict, state_dict_digest


def test_fill_matches_reference_implementation_on_every_rule():
    reference = reference_fill_module()
    state = {
        "a.query_feat.weight": torch.empty(5, 3),
        "refpoint_embed.weight": torch.empty(4, 4),
        "x.layer_scale1.lambda1": torch.empty(6),
        "e.cls_token": torch.empty(1, 1, 6),
        "e.position_embeddings": torch.empty(1, 5, 6),
        "bn.running_mean": torch.empty(3),
        "bn.running_var": torch.empty(3),
        "bn.num_batches_tracked": torch.tensor(7),
        "conv.weight": torch.empty(4, 3, 2, 2),
        "norm.weight": torch.empty(4),
        "norm.bias": torch.empty(4),
        "half.weight": torch.empty(3, 2, dtype=torch.float16),
    }
    ours = filled_state_dict(state, seed=3)
    theirs = reference.fill_state_dict(state, 3)
    for key in state:
        assert torch.equal(ours[key], theirs[key]), key
        assert ours[key].dtype == state[key].dtype
    assert state_dict_digest(ours) == reference.state_dict_sha256(theirs)


def test_fill_is_independent_of_other_keys_and_order(filled_detector):
    model_state = filled_detector("nano").state_dict()  # the fill reads only keys, shapes and dtypes
    full = filled_state_dict(model_state, seed=0)
    subset = filled_state_dict({"class_embed.bias": model_state["class_embed.bias"]}, seed=0)
    assert torch.equal(full["class_embed.bias"], subset["class_embed.bias"])
    other_seed = filled_state_dict({"class_embed.bias": model_state["class_embed.bias"]}, seed=1)
    assert not torch.equal(full["class_embed.bias"], other_seed["class_embed.bias"])
