"""Parity of the detector with the published upstream rfdetr 1.2.1, for every size, as built (plain PyTorch)
and as the loaders run it on the CPU (``rfdetr.accel.accelerate``).

Goldens: tests/golden (README there). Tolerances are the reference's: logits 1e-4,
boxes 1e-5, fp16-stored intermediates 5e-3, float32 means of intermediates 1e-5.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import golden, reference_configs, reference_keys

from rfdetr.accel import accelerate
from rfdetr.config import SIZES, model_config
from rfdetr.util.weight_fill import state_dict_digest

LOGITS_ATOL = 1e-4
BOXES_ATOL = 1e-5
# Noise between two correct implementations (thread count, attention kernels) is <= 2.2e-5.
SCORE_NOISE = 1e-4


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


VARIANTS = ("plain", "accelerated")


def _parity_cases(slow_plain: tuple[str, ...] = ()) -> list:
    """Every size plain and nano also accelerated in the quick tier; the other accelerated sizes, and the plain
    sizes in ``slow_plain``, in the slow one."""
    def slow(size: str, variant: str) -> bool:
        return size in slow_plain if variant == "plain" else size != "nano"

    return [pytest.param(size, variant, marks=[pytest.mark.slow] if slow(size, variant) else [])
            for size in SIZES for variant in VARIANTS]


PARITY_CASES = _parity_cases()
# A padded batch and the intermediates of large take 6 s each: its single image stays in the quick tier.
HEAVY_PARITY_CASES = _parity_cases(slow_plain=("large",))
# The backward pass of large takes 6 s: the slow tier.
BACKWARD_SIZES = [pytest.param(size, marks=pytest.mark.slow) if size == "large" else size for size in SIZES]


@pytest.fixture(scope="module")
def accelerated_detectors(filled_detectors) -> dict:
    """size -> an accelerated copy of the shared filled detector (made on first use, kept for this module)."""
    return {}


@pytest.fixture
def parity_detector(filled_detector, filled_detectors, accelerated_detectors):
    """``parity_detector(size, variant)``: the shared filled detector, plain or accelerated for the CPU."""

    def get(size: str, variant: str):
        if variant == "plain":
            return filled_detector(size)
        if size not in accelerated_detectors:
            accelerated_detectors[size] = accelerate(copy.deepcopy(filled_detectors[size]), "cpu", "float32")
        return accelerated_detectors[size]

    return get


@pytest.mark.parametrize("size", SIZES)
def test_state_dict_matches_published_checkpoint_layout(size, filled_detector):
    model = filled_detector(size)  # filling keeps every key, shape and dtype that build_detector made
    ours = {key: (list(value.shape), _dtype_name(value)) for key, value in model.state_dict().items()}
    expected = reference_keys(size)
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    stats = reference_configs()[size]["state_dict"]
    assert len(ours) == stats["num_keys"]
    assert sum(value.numel() for value in model.state_dict().values()) == stats["num_params"]


@pytest.mark.parametrize("size", SIZES)
def test_filled_weights_digest(size, filled_detector):
    digest = state_dict_digest(filled_detector(size).state_dict())
    assert digest == reference_configs()[size]["state_dict"]["fill_sha256_seed0"]


class ProposalRecorder:
    """Wraps ``transformer.select_proposals``: records scores and may force the golden indices."""

    def __init__(self, transformer, forced: torch.Tensor | None = None):
        self.transformer = transformer
        self.original = transformer.select_proposals
        self.forced = forced
        self.scores = None
        self.indices = None

    def __call__(self, scores, k):
        self.scores = scores
        self.indices = self.forced if self.forced is not None else self.original(scores, k)
        return self.indices

    def __enter__(self):
        self.transformer.select_proposals = self
        return self

    def __exit__(self, *exc):
        del self.transformer.select_proposals  # back to the class method


def _run_with_near_tie_protocol(model, inputs, debug: dict) -> dict:
    """Forward; if top-k order differs from upstream, it must be a near-tie, then use the golden order."""
    with torch.no_grad(), ProposalRecorder(model.transformer) as recorder:
        out = model(inputs)
    golden_scores, golden_index = debug["enc_scores"], debug["enc_topk_indexes"]
    torch.testing.assert_close(recorder.scores, golden_scores, atol=SCORE_NOISE, rtol=0)
    # Padded tokens tie exactly (identical content), so compare the selected scores, not raw indices.
    ours_selected = golden_scores.gather(1, recorder.indices)
    golden_selected = golden_scores.gather(1, golden_index)
    if torch.equal(ours_selected, golden_selected):
        return out
    # A different ranking is acceptable only where golden scores are closer than our noise.
    assert (ours_selected - golden_selected).abs().max() < SCORE_NOISE, "proposal ranking differs beyond noise"
    with torch.no_grad(), ProposalRecorder(model.transformer, forced=golden_index):
        return model(inputs)


def _assert_outputs_close(out: dict, expected: dict):
    torch.testing.assert_close(out["pred_logits"], expected["pred_logits"], atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(out["pred_boxes"], expected["pred_boxes"], atol=BOXES_ATOL, rtol=0)
    enc, expected_enc = out["enc_outputs"], expected["enc_outputs"]
    torch.testing.assert_close(enc["pred_logits"], expected_enc["pred_logits"], atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(enc["pred_boxes"], expected_enc["pred_boxes"], atol=BOXES_ATOL, rtol=0)
    for ours, theirs in zip(out["aux_outputs"], expected.get("aux_outputs", [])):
        torch.testing.assert_close(ours["pred_logits"], theirs["pred_logits"], atol=LOGITS_ATOL, rtol=0)
        torch.testing.assert_close(ours["pred_boxes"], theirs["pred_boxes"], atol=BOXES_ATOL, rtol=0)


@pytest.mark.parametrize(("size", "variant"), PARITY_CASES)
def test_single_image_outputs_match_upstream(size, variant, parity_detector):
    g = golden(size)
    model = parity_detector(size, variant)
    out = _run_with_near_tie_protocol(model, g["input_a"], g["debug_a"])
    assert out["pred_logits"].shape == (1, 300, 91)
    assert len(out["aux_outputs"]) == len(g["out_a"]["aux_outputs"]) == model_config(size).dec_layers - 1
    _assert_outputs_close(out, g["out_a"])


@pytest.mark.parametrize(("size", "variant"), HEAVY_PARITY_CASES)
def test_padded_batch_outputs_match_upstream(size, variant, parity_detector):
    g = golden(size)
    model = parity_detector(size, variant)
    images = g["input_b"]
    assert images[0].shape != images[1].shape  # the second image is smaller: padding is exercised
    out = _run_with_near_tie_protocol(model, images, g["debug_b"])
    assert out["pred_logits"].shape == (2, 300, 91)
    expected = {key: value for key, value in g["out_b"].items() if key != "aux_outputs"}
    _assert_outputs_close(out, expected)


@pytest.mark.parametrize(("size", "variant"), HEAVY_PARITY_CASES)
def test_intermediate_features_match_upstream(size, variant, parity_detector):
    """Backbone, projector and decoder intermediates (fp16-stored), to localise a regression."""
    g = golden(size)
    debug = g["debug_a"]
    model = parity_detector(size, variant)
    encoder = model.backbone[0].encoder
    captured = {}
    hook = model.transformer.register_forward_hook(lambda _m, _i, out: captured.update(out))
    try:
        with torch.no_grad():
            embeddings = encoder.encoder.embeddings(g["input_a"])
            features = encoder(g["input_a"])
            levels = model.backbone[0].projector(features)
        _run_with_near_tie_protocol(model, g["input_a"], debug)  # the last forward's decoder is kept
    finally:
        hook.remove()

    def check(tensor, stored):
        """The first channels per element (fp16-stored), and the means upstream stored in float32."""
        assert list(tensor.shape) == stored["shape"]
        channel_dim = stored["channel_dim"]
        first = stored["first_channels_f16"]
        torch.testing.assert_close(tensor.narrow(channel_dim, 0, first.shape[channel_dim]).half().float(),
                                   first.float(), atol=5e-3, rtol=0)
        if "mean_per_channel" in stored:
            other_dims = [dim for dim in range(tensor.dim()) if dim != channel_dim]
            torch.testing.assert_close(tensor.mean(other_dims), stored["mean_per_channel"], atol=1e-5, rtol=0)
        if "mean_over_channels" in stored:
            torch.testing.assert_close(tensor.mean(channel_dim), stored["mean_over_channels"], atol=1e-5, rtol=0)

    check(embeddings, debug["embeddings"])
    assert len(features) == len(debug["encoder_features"])
    for tensor, stored in zip(features, debug["encoder_features"]):
        check(tensor, stored)
    assert len(levels) == len(debug["projector_features"])
    for tensor, stored in zip(levels, debug["projector_features"]):
        check(tensor, stored)
    check(captured["hs"][-1], debug["decoder_hs_last"])
    torch.testing.assert_close(captured["reference"], debug["decoder_ref"][0], atol=BOXES_ATOL, rtol=0)


def _training_resolution(size: str) -> int:
    """Smallest valid input with at least num_queries tokens, so every query group gets proposals."""
    config = model_config(size)
    side = config.block_size
    while (side // config.patch_size) ** 2 < config.num_queries:
        side += config.block_size
    return side


def test_training_mode_uses_all_groups_and_isolates_them(filled_detector_copy):
    model = filled_detector_copy("nano").train()
    side = _training_resolution("nano")
    images = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(images)
        assert out["pred_logits"].shape == (1, 3900, 91)
        assert out["enc_outputs"]["pred_logits"].shape == (1, 3900, 91)
        # Change only group 1's content queries: group 0 must not notice, group 1 must.
        model.query_feat.weight[300:600] += 1.0
        perturbed = model(images)
    torch.testing.assert_close(perturbed["pred_logits"][:, :300], out["pred_logits"][:, :300], atol=0, rtol=0)
    torch.testing.assert_close(perturbed["pred_logits"][:, 600:], out["pred_logits"][:, 600:], atol=0, rtol=0)
    assert (perturbed["pred_logits"][:, 300:600] - out["pred_logits"][:, 300:600]).abs().max() > 1e-3
    model.eval()
    with torch.no_grad():
        assert model(images)["pred_logits"].shape == (1, 300, 91)


@pytest.mark.parametrize("size", BACKWARD_SIZES)
def test_training_forward_backward_reaches_every_parameter(size, filled_detector_copy):
    model = filled_detector_copy(size).train()
    side = _training_resolution(size)
    images = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    out = model(images)
    loss = out["pred_logits"].sigmoid().mean() + out["pred_boxes"].mean()
    loss = loss + sum(a["pred_logits"].sigmoid().mean() + a["pred_boxes"].mean() for a in out["aux_outputs"])
    loss = loss + out["enc_outputs"]["pred_logits"].sigmoid().mean() + out["enc_outputs"]["pred_boxes"].mean()
    loss.backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert trainable
    without_grad = [name for name, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert without_grad == []
    zero_grad = [name for name, p in trainable if p.grad.abs().sum() == 0]
    assert zero_grad == []
