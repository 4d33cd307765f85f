"""Where inference time goes: the torch profiler's self CPU time per operator class, per model size.

Run from the repository root (on a quiet machine)::

    .venv/bin/python benchmarks/profile_inference.py --sizes nano base --threads 2 --dtype float32

Each size at its native resolution, eval, batch 1, deterministic filled weights, after warm-up
runs; ``--runs`` profiled forwards. Operators are grouped into classes (matrix products, attention,
deformable sampling, normalisation, element-wise, copies and layout, reductions, other) and each
class's share of the self CPU time is printed with its top operators, one Markdown table per size.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rfdetr.config import SIZES, model_config  # noqa: E402
from rfdetr.models import build_detector  # noqa: E402
from rfdetr.util.precision import inference_autocast  # noqa: E402
from rfdetr.util.weight_fill import fill_model_  # noqa: E402

# Operator-name fragments -> class; the first class whose fragment occurs in the name wins.
CLASSES = (
    ("attention", ("scaled_dot_product", "flash_attention", "softmax")),
    ("matrix products", ("mm", "addmm", "bmm", "linear", "matmul", "baddbmm", "mkldnn", "convolution", "conv")),
    ("deformable sampling", ("grid_sampler",)),
    ("normalisation", ("layer_norm", "group_norm", "batch_norm")),
    ("copies and layout", ("copy_", "contiguous", "clone", "cat", "stack", "permute", "transpose", "view",
                           "reshape", "index", "gather", "to_copy", "_to_copy", "pad", "expand", "unfold",
                           "select", "slice", "split", "chunk")),
    ("element-wise", ("add", "mul", "div", "sub", "gelu", "relu", "sigmoid", "exp", "log", "sqrt", "pow", "tanh",
                      "clamp", "where", "fill", "zero", "neg", "rsub", "silu", "erf", "masked")),
    ("reductions", ("sum", "mean", "max", "min", "topk", "sort", "argmax")),
)


def operator_class(name: str) -> str:
    short = name.split("::")[-1]
    for label, fragments in CLASSES:
        if any(fragment in short for fragment in fragments):
            return label
    return "other"


def profile_size(size: str, args: argparse.Namespace) -> dict:
    config = model_config(size)
    model = fill_model_(build_detector(config), seed=0).eval().requires_grad_(False)
    x = torch.rand(1, 3, config.resolution, config.resolution, generator=torch.Generator().manual_seed(0))
    autocast = inference_autocast(args.dtype, torch.device("cpu"))
    with torch.inference_mode(), autocast():
        for _ in range(args.warmup):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.runs):
                model(x)
    per_class: dict[str, float] = defaultdict(float)
    per_op: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in prof.key_averages():
        if not event.key.startswith(("aten::", "mkldnn::", "mkl::")):
            continue
        label = operator_class(event.key)
        per_class[label] += event.self_cpu_time_total
        per_op[label][event.key] += event.self_cpu_time_total
    total = sum(per_class.values())
    return {"size": size, "resolution": config.resolution, "total_ms": total / 1e3 / args.runs,
            "classes": {label: {"ms": us / 1e3 / args.runs, "share": us / total,
                                "top": [(name, op_us / total) for name, op_us in
                                        sorted(per_op[label].items(), key=lambda kv: -kv[1])[:3]]}
                        for label, us in sorted(per_class.items(), key=lambda kv: -kv[1])}}


def markdown(result: dict) -> str:
    lines = [f"{result['size']} at {result['resolution']} px: {result['total_ms']:.0f} ms of operator self time "
             "per forward", "", "| operator class | ms | share | top operators |", "|---|---|---|---|"]
    for label, entry in result["classes"].items():
        top = ", ".join(f"{name.split('::')[-1]} {share:.1%}" for name, share in entry["top"])
        lines.append(f"| {label} | {entry['ms']:.1f} | {entry['share']:.1%} | {top} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dtype}, batch 1, eval\n")
    for size in args.sizes:
        print(markdown(profile_size(size, args)) + "\n", flush=True)


if __name__ == "__main__":
    main()
