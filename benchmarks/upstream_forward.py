"""Upstream ``rfdetr==1.2.1`` inference forwards, timed: the reference of ``bench_vs_upstream.py``.

Run by ``bench_vs_upstream.py`` with the interpreter of a side venv that has ``rfdetr==1.2.1`` installed,
from a scratch folder (so that ``import rfdetr`` is upstream's, not this project's)::

    /path/to/side-venv/bin/python benchmarks/upstream_forward.py FOLDER SETTINGS_JSON

``FOLDER`` holds what the driver wrote: ``input.pt`` (the ``[1, 3, R, R]`` model input) and
``weights.pt`` (the project's filled state dict; upstream's keys are the same file format, so both models
compute the same function). The model is built as a user gets it, ``RFDETR<Size>(pretrain_weights=None)``
(DINOv2 weights are not fetched: no network here, and latency does not depend on them), loaded strictly
with those weights, eval, ``torch.inference_mode()``. ``mode`` ``"plain"`` times ``model.model.model``, the
forward ``predict()`` runs by default; ``"traced"`` times upstream's own speed path,
``optimize_for_inference()`` (``export()`` + ``torch.jit.trace``). Writes ``upstream_<mode>_out.pt``
(logits, boxes) and prints one ``BENCH_RESULT {json}`` line: milliseconds per forward and the attention
implementation the backbone ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from timing import timed_ms  # the same directory

WRAPPERS = {"nano": "RFDETRNano", "small": "RFDETRSmall", "medium": "RFDETRMedium", "base": "RFDETRBase",
            "large": "RFDETRLarge"}


def build(size: str):
    """Upstream's wrapper for ``size`` without any download: the base and large sizes would fetch DINOv2's
    weights from the hub when their positional grid matches DINOv2's; here the backbone is built from its
    config alone."""
    import rfdetr
    from rfdetr.models.backbone import dinov2

    backbone_class = dinov2.WindowedDinov2WithRegistersBackbone
    backbone_class.from_pretrained = classmethod(lambda cls, name, config: cls(config))
    return getattr(rfdetr, WRAPPERS[size])(pretrain_weights=None, device="cpu")


def main(folder: str, settings_json: str) -> None:
    settings = json.loads(settings_json)
    torch.set_num_threads(settings["threads"])
    folder = Path(folder)
    x = torch.load(folder / "input.pt")
    wrapper = build(settings["size"])
    network = wrapper.model.model
    network.load_state_dict(torch.load(folder / "weights.pt"), strict=True)
    network.eval()
    if settings["mode"] == "traced":
        wrapper.optimize_for_inference(compile=True, batch_size=1)
        forward = wrapper.model.inference_model
    else:
        forward = network
    attention = getattr(network.backbone[0].encoder.encoder.config, "_attn_implementation", "unknown")
    with torch.inference_mode():
        out = forward(x)
        times = timed_ms(lambda: forward(x), settings["warmup"], settings["runs"])
    logits, boxes = (out["pred_logits"], out["pred_boxes"]) if isinstance(out, dict) else (out[1], out[0])
    torch.save({"logits": logits, "boxes": boxes}, folder / f"upstream_{settings['mode']}_out.pt")
    print("BENCH_RESULT " + json.dumps({"times_ms": times, "attention": attention,
                                         "threads": torch.get_num_threads(), "torch": torch.__version__}),
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
