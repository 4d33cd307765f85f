"""Re-make ``tests/golden`` from the upstream reference data, trimmed to what the tests assert.

    python tools/trim_goldens.py                                   # ../shared/reference -> tests/golden
    python tools/trim_goldens.py --reference DIR --out tests/golden

The reference folder holds what the published upstream ``rfdetr==1.2.1`` produced for the five
native sizes (``golden_<size>.pt``, ``keys_<size>.txt``, ``configs.json``, ``fill_weights.py``,
``make_checkpoint.py``, ``checkpoint_nano_args.pth``). The trimming keeps every number a test
compares and only those:

- model inputs are not stored: the tests rebuild them from the two scikit-image photos, and the
  golden keeps the sha256 of upstream's input tensors, so the rebuilt ones must be bit-identical;
- raw outputs, post-processed detections, proposal scores, top-k indices and reference boxes stay
  float32 / int64 as written (the tests compare them at 1e-4 / 1e-5 or exactly);
- backbone, projector and decoder intermediates keep their first ``FIRST_CHANNELS`` channels as
  float16 (the tests compare them at 5e-3), upstream's float32 per-channel means, and the float32
  mean over channels where upstream stored one;
- the level-0 position-encoding statistics and mask are kept for nano only, the training step
  (nano only) whole; everything else (debug statistics, batch-b intermediates) is dropped;
- ``configs.json`` keeps the fields the tests read; the two reference scripts lose their
  self-check / command-line blocks and get a docstring saying where they come from.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import shutil
from pathlib import Path

import torch

SIZES = ("nano", "small", "medium", "base", "large")
# Sizes whose level-0 position encoding and mask a test reads (test_backbone).
POSITION_SIZES = ("nano",)
# Channels kept of each intermediate; upstream itself stored large feature maps this way.
FIRST_CHANNELS = 16
SUMMARY_FIELDS = (
    "encoder", "hidden_dim", "patch_size", "num_windows", "dec_layers", "sa_nheads", "ca_nheads", "dec_n_points",
    "num_queries", "num_select", "group_detr", "projector_scale", "out_feature_indexes", "positional_encoding_size",
    "resolution", "num_classes", "dim_feedforward", "aux_loss", "num_feature_levels",
)
STATE_DICT_FIELDS = ("num_keys", "num_params", "fill_sha256_seed0")
COPIED_FILES = [f"keys_{size}.txt" for size in SIZES] + ["checkpoint_nano_args.pth"]
SCRIPT_HEADERS = {
    "fill_weights.py": '''"""Reference implementation of the deterministic weight fill the goldens were made with.

Every value depends only on (seed, state-dict key, shape, dtype). The reference data's
fill_weights.py without its module docstring and self-check, copied by tools/trim_goldens.py;
tests/test_weight_fill.py checks rfdetr/util/weight_fill.py against it.
"""''',
    "make_checkpoint.py": '''"""Reference writer of upstream-format checkpoints ({'model': state_dict, 'args': Namespace}).

The keys, shapes and dtypes (and their order) come from keys_<size>.txt, the weights from
fill_weights.py and the 'args' object from checkpoint_<size>_args.pth (only nano has one), all in
this folder. The reference data's make_checkpoint.py without its module docstring and command
line, copied by tools/trim_goldens.py; the tests call write_checkpoint().
"""''',
}


def tensor_digest(tensor: torch.Tensor) -> dict:
    """Shape, dtype and sha256 of the raw bytes: enough to check a rebuilt tensor bit for bit."""
    data = tensor.detach().contiguous().numpy().tobytes()
    return {"shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", ""),
            "sha256": hashlib.sha256(data).hexdigest()}


def own(tensor: torch.Tensor) -> torch.Tensor:
    """A compact copy: torch.save writes a view's whole storage, a copy only its own elements."""
    return tensor.contiguous().clone()


def trim_feature(stored: dict) -> dict:
    """A feature entry as its first channels (float16) and upstream's float32 means.

    Upstream stored small maps whole (``full_f16``) and large ones as their first 16 channels plus
    the mean over channels (``first_channels_f16``, ``mean_over_channels``).
    """
    channel_dim = stored["channel_dim"]
    whole = stored["full_f16"] if "full_f16" in stored else stored["first_channels_f16"]
    trimmed = {"shape": list(stored["shape"]), "channel_dim": channel_dim,
               "first_channels_f16": own(whole.narrow(channel_dim, 0, FIRST_CHANNELS)),
               "mean_per_channel": own(stored["mean_per_channel"])}
    if "mean_over_channels" in stored:
        trimmed["mean_over_channels"] = own(stored["mean_over_channels"])
    return trimmed


def trim_outputs(outputs: dict) -> dict:
    """Final logits and boxes, the encoder's proposals and (input a) every earlier decoder layer's."""
    trimmed = {"pred_logits": own(outputs["pred_logits"]), "pred_boxes": own(outputs["pred_boxes"]),
               "enc_outputs": {key: own(value) for key, value in outputs["enc_outputs"].items()}}
    if "aux_outputs" in outputs:
        trimmed["aux_outputs"] = [{key: own(value) for key, value in layer.items()}
                                  for layer in outputs["aux_outputs"]]
    return trimmed


def trim_detections(detections: list[dict]) -> list[dict]:
    return [{key: own(detection[key]) for key in ("scores", "labels", "boxes")} for detection in detections]


def trim_debug(debug: dict, size: str, intermediates: bool) -> dict:
    """Proposal scores and top-k indices (the near-tie protocol); with ``intermediates`` also those."""
    trimmed = {"enc_scores": own(debug["enc_scores"]), "enc_topk_indexes": own(debug["enc_topk_indexes"])}
    if size in POSITION_SIZES:
        trimmed["pos"] = [{key: debug["pos"][0][key] for key in ("shape", "sum", "abs_sum", "mean_per_channel")}]
        trimmed["masks"] = [own(debug["masks"][0])]
    if intermediates:
        trimmed["embeddings"] = trim_feature(debug["embeddings"])
        trimmed["encoder_features"] = [trim_feature(feature) for feature in debug["encoder_features"]]
        trimmed["projector_features"] = [trim_feature(feature) for feature in debug["projector_features"]]
        hs = debug["decoder_hs_last_f16"]  # [B, Q, hidden] after the decoder norm, stored whole by upstream
        trimmed["decoder_hs_last"] = {"shape": list(hs.shape), "channel_dim": hs.dim() - 1,
                                      "first_channels_f16": own(hs.narrow(hs.dim() - 1, 0, FIRST_CHANNELS))}
        trimmed["decoder_ref"] = own(debug["decoder_ref"])
    return trimmed


def trim_golden(golden: dict, size: str) -> dict:
    meta = golden["meta"]
    trimmed = {
        "meta": {key: meta[key] for key in ("size", "seed", "versions", "resolution", "input_b_hw",
                                            "target_sizes_a", "target_sizes_b", "image_a", "image_b")},
        "inputs": {"input_a": tensor_digest(golden["input_a"]),
                   "input_b": [tensor_digest(image) for image in golden["input_b"]]},
        "out_a": trim_outputs(golden["out_a"]),
        "out_b": trim_outputs({key: value for key, value in golden["out_b"].items() if key != "aux_outputs"}),
        "post_a": trim_detections(golden["post_a"]),
        "post_b": trim_detections(golden["post_b"]),
        "debug_a": trim_debug(golden["debug_a"], size, intermediates=True),
        "debug_b": trim_debug(golden["debug_b"], size, intermediates=False),
    }
    if "train_step" in golden:
        trimmed["train_step"] = golden["train_step"]  # ~1 kB: targets, settings, losses, grad norm, matching
    return trimmed


def trim_configs(configs: dict) -> dict:
    return {"sizes": {size: {"summary": {field: configs["sizes"][size]["summary"][field] for field in SUMMARY_FIELDS},
                             "state_dict": {field: configs["sizes"][size]["state_dict"][field]
                                            for field in STATE_DICT_FIELDS}}
                      for size in SIZES}}


def trim_script(source: str, header: str) -> str:
    """The script without its module docstring and ``if __name__ == "__main__":`` block, under ``header``."""
    tree = ast.parse(source)
    dropped = set()
    for node in tree.body:
        is_docstring = node is tree.body[0] and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        is_main = isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
        if is_docstring or is_main:
            dropped.update(range(node.lineno - 1, node.end_lineno))
    kept = [line for number, line in enumerate(source.splitlines()) if number not in dropped]
    return header + "\n\n" + "\n".join(kept).strip("\n") + "\n"


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=root.parent / "shared" / "reference",
                        help="folder with upstream's golden_<size>.pt, keys_<size>.txt, configs.json and scripts")
    parser.add_argument("--out", type=Path, default=root / "tests" / "golden",
                        help="folder the trimmed goldens are written into (its README.md is left alone)")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    for size in SIZES:
        golden = torch.load(args.reference / f"golden_{size}.pt", map_location="cpu", weights_only=True)
        torch.save(trim_golden(golden, size), args.out / f"golden_{size}.pt")
    configs = json.loads((args.reference / "configs.json").read_text())
    (args.out / "configs.json").write_text(json.dumps(trim_configs(configs), indent=1) + "\n")
    for name in COPIED_FILES:
        shutil.copyfile(args.reference / name, args.out / name)
    for name, header in SCRIPT_HEADERS.items():
        (args.out / name).write_text(trim_script((args.reference / name).read_text(), header))
    print(f"wrote {args.out}: {folder_size(args.out) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
