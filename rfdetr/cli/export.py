"""``rfdetr export``: a checkpoint to ONNX."""

from __future__ import annotations

import argparse
import logging
import sys

from rfdetr.cli.predict import add_size_flag, load_predictor

logger = logging.getLogger(__name__)

EXPORT_DOC = """Export a checkpoint to ONNX (checked against PyTorch with ONNX Runtime).

    rfdetr export runs/detector_nano_384_1/checkpoint_best_total.pth --out export
    rfdetr export model.pth --out export --quantize int8    # also inference_model_int8.onnx
"""


def export_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "rfdetr export", description=EXPORT_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="a .pth checkpoint (ours or upstream's)")
    parser.add_argument("--out", default="export", help="output folder (default: export)")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="also write an int8 model (dynamic quantization of the matrix products)")
    parser.add_argument("--batch", type=int, default=1, help="batch size baked into the graph (default: 1)")
    add_size_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model = load_predictor(args.weights, "cpu", "float32", args.size)
        path = model.export(args.out, batch_size=args.batch, quantize=args.quantize)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logger.info("wrote %s", path)
    return 0
