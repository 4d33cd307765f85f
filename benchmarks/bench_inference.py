"""CPU inference benchmark of the RF-DETR detector, one model size per fresh process.

Run from the repository root (on a quiet machine; all five sizes take several minutes)::

    .venv/bin/python benchmarks/bench_inference.py --threads 2 --warmup 3 --runs 10 --json bench.json

For each size at its native resolution: eval mode, batch 1, ``torch.set_num_threads(N)``, in each
precision of ``--dtypes`` (``float32``; ``bfloat16``: the bf16 autocast of ``dtype="bfloat16"``;
``int8``: the ``export(quantize="int8")`` model on ONNX Runtime, timed beside the fp32 ONNX model).
Reports median/min/max latency, parameters, GFLOP of one forward (FlopCounterMode: one
multiply-add = 2 FLOPs), achieved GFLOP/s, this machine's fp32 matmul rate measured in the same
process with the same thread count, their ratio (efficiency) and the peak RSS of that process.
The bf16 and int8 rows also give their speed-up over fp32 (PyTorch, resp. ONNX Runtime) with the
two alternated in the same process ("vs fp32, alternated"); "vs fp32" divides medians measured
in different processes, minutes apart.
Two probes: torch's ``a @ b`` (MKL sgemm on x86) and the same product on oneDNN; on some CPUs (AMD
EPYC) oneDNN's product runs faster than MKL's, on Intel Xeons MKL is the faster, and the accelerated
model's linear layers take (packed) MKL on Intel, plain F.linear elsewhere (rfdetr.accel), so both ratios are
reported.
The model is timed as the loaders build it: plain, then ``rfdetr.accel.accelerate(model, "cpu", dtype)``
(``--plain``: without it). "vs plain, alternated" is the plain model's time over the accelerated one's,
the two run back to back in each round of one process: the gain of the CPU speed paths.
The paired efficiency times one forward and both probe products back to back in each of ``--runs``
rounds and takes the median of the per-round ratios against the faster probe: the figure to read
on a shared host, whose speed drifts between phases (separately timed probes moved by 40% between
runs here). Set RFDETR_CPU_LINEAR=mkl, onednn or aten to force the linear layers' path.
bf16 needs a CPU with AVX-512 BF16 or AMX; ``--emulated_bf16`` runs it anyway where PyTorch emulates
the arithmetic (slower than fp32: for comparing code paths, not for deciding to use bf16).
Weights are deterministic fills (``fill_model_``), not trained ones: latency does not depend on them.

Then, for one size (``--predict_size``, default nano), the end-to-end ``predict()`` path on a 1080p
JPEG (the astronaut photo resized to 1920 x 1080): file decode, preprocessing, the model,
post-processing and ``predict(path)`` as a whole, for PyTorch and for ONNX Runtime (the exported
model through :class:`rfdetr.export.ONNXDetector`), with the overhead of everything that is not the
model in percent of the model's own time. Two overheads are printed: the sum of the measured stages
(decode + preprocess + post-process) over the model time, and ``predict(path)`` as a whole over the
model run alone; the second is larger because the model runs slower right after a 1080p decode has
evicted its data from the caches.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import resource
import statistics
import subprocess
import sys
import tempfile

import psutil
import torch
from timing import timed_ms  # the same directory
from torch.utils.flop_counter import FlopCounterMode

from rfdetr.accel import accelerate
from rfdetr.accel.kernels import onednn_linear_op
from rfdetr.config import SIZES, model_config
from rfdetr.models import build_detector
from rfdetr.util.precision import cpu_flags, cpu_has_bf16, inference_autocast
from rfdetr.util.weight_fill import fill_model_

# The worker prints its result on one line with this prefix, so stray prints from the model
# code or libraries on stdout cannot be mistaken for the result.
RESULT_PREFIX = "BENCH_RESULT "
PROBE_N = 2048  # matmul probe side: large enough to reach the BLAS steady-state rate
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def make_input(resolution: int, kind: str) -> torch.Tensor:
    """A ``[1, 3, R, R]`` model input: a real photo (realistic activations) or Gaussian noise."""
    if kind == "photo":
        from skimage.data import astronaut  # imported here: only this input kind needs it

        from rfdetr.datasets.preprocess import preprocess  # ImageNet normalise + antialiased bilinear resize

        return preprocess(astronaut(), resolution)[None]
    return torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))


def matmul_probe_gflops(warmup: int, runs: int) -> dict[str, float]:
    """fp32 matmul rates of this process (GFLOP/s): torch's ``a @ b`` (the issue's probe) and the
    same product on oneDNN (what :class:`rfdetr.accel.linear.CpuLinear` may use; 0 if unavailable)."""
    onednn = onednn_linear_op()
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(PROBE_N, PROBE_N, generator=gen)
    b = torch.randn(PROBE_N, PROBE_N, generator=gen)
    out = torch.empty(PROBE_N, PROBE_N)  # preallocated so allocation is not timed
    rate = lambda ms: 2 * PROBE_N**3 / 1e9 / (ms / 1e3)  # noqa: E731
    rates = {"torch": rate(statistics.median(timed_ms(lambda: torch.matmul(a, b, out=out), warmup, runs)))}
    rates["onednn"] = 0.0
    rates["bf16"] = 0.0
    if cpu_has_bf16():  # torch's bf16 matmul (oneDNN/AMX on CPUs that have them)
        a16, b16, out16 = a.bfloat16(), b.bfloat16(), out.bfloat16()
        rates["bf16"] = rate(statistics.median(timed_ms(lambda: torch.matmul(a16, b16, out=out16), warmup, runs)))
    if onednn is not None:
        with torch.inference_mode():
            rates["onednn"] = rate(statistics.median(timed_ms(lambda: onednn(a, b, None, "none", [], ""),
                                                              warmup, runs)))
    return rates


def paired_efficiency(run, gflop: float, rounds: int) -> float:
    """Median over ``rounds`` of the model's GFLOP/s over the best fp32 probe's (the faster of ``a @ b``
    and oneDNN's product in that round), the model and the probes timed back to back in each round: on
    a shared host whose speed drifts by tens of percent between phases, a slow phase slows both sides
    of each ratio."""
    onednn = onednn_linear_op()

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(PROBE_N, PROBE_N, generator=gen), torch.randn(PROBE_N, PROBE_N, generator=gen)
    out = torch.empty(PROBE_N, PROBE_N)
    probes = [lambda: torch.matmul(a, b, out=out)]
    if onednn is not None:
        probes.append(lambda: onednn(a, b, None, "none", [], ""))
    ratios = []
    with torch.inference_mode():
        for probe in probes:
            probe()
        for _ in range(rounds):
            model_ms = timed_ms(run, 0, 1)[0]
            probe_ms = min(timed_ms(probe, 0, 1)[0] for probe in probes)
            ratios.append((gflop / model_ms) / (2 * PROBE_N**3 / 1e9 / probe_ms))
    return statistics.median(ratios)


def paired_speedup(reference, candidate, rounds: int) -> float:
    """Median over ``rounds`` of reference time / candidate time, the two run back to back in each round
    (after one untimed call each), so that the host's drift between phases cancels out of each ratio."""
    reference(), candidate()
    return statistics.median(timed_ms(reference, 0, 1)[0] / timed_ms(candidate, 0, 1)[0] for _ in range(rounds))


def forward_in(autocast, model: torch.nn.Module, x: torch.Tensor):
    with autocast():
        return model(x)


def onnx_runs(model: torch.nn.Module, size: str, x: torch.Tensor, folder: str):
    """ONNX Runtime sessions of ``model`` exported in fp32 and quantized to int8 (``export(quantize="int8")``),
    as callables on ``x``, and the largest |logit| difference of int8 from fp32 on it."""
    from rfdetr.classes import ClassTable
    from rfdetr.export import ONNXDetector, export_onnx

    classes = ClassTable.coco()
    int8_path = export_onnx(model, model_config(size), classes, folder, verify=False, quantize="int8")
    fp32, int8 = (ONNXDetector(p).session for p in (int8_path.with_name("inference_model.onnx"), int8_path))
    feed = {"images": x.numpy()}
    logits = [session.run(["logits"], feed)[0] for session in (fp32, int8)]
    return (lambda: fp32.run(None, feed)), (lambda: int8.run(None, feed)), float(abs(logits[0] - logits[1]).max())


def worker(size: str, args: argparse.Namespace) -> dict:
    """Measure one size in this process; returns a JSON-serialisable dict.

    ``args.dtype`` ``"int8"`` times the int8 ONNX Runtime model instead of PyTorch, and the fp32 ONNX
    Runtime model beside it (``onnx_fp32_ms``)."""
    torch.set_num_threads(args.threads)
    config = model_config(size)
    x = make_input(config.resolution, args.input)
    proc = psutil.Process()
    rss_before = proc.memory_info().rss  # after imports and input, so the delta is the model's share

    # requires_grad_(False) as in deployment; it also keeps FlopCounterMode's module tracker from
    # hooking autograd on slices of parameters (e.g. refpoint_embed.weight[:queries]), which
    # fails when they were taken under inference/no-grad mode.
    plain = fill_model_(build_detector(config), seed=0).eval().requires_grad_(False)
    model = plain if args.plain else accelerate(copy.deepcopy(plain), "cpu", args.dtype)
    params = sum(p.numel() for p in model.parameters())
    extra = {}
    if args.dtype == "int8":
        with tempfile.TemporaryDirectory() as folder:
            run_fp32, run, difference = onnx_runs(model, size, x, folder)
            times = timed_ms(run, args.warmup, args.runs)
            extra = {"onnx_fp32_ms": statistics.median(timed_ms(run_fp32, args.warmup, args.runs)),
                     "int8_max_logit_diff": difference,
                     "paired_speedup": paired_speedup(run_fp32, run, args.runs)}
            run_batch = None  # the graph's batch size is fixed at export
    else:
        if args.dtype == "bfloat16" and args.emulated_bf16 and not cpu_has_bf16():
            autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
        else:
            autocast = inference_autocast(args.dtype, torch.device("cpu"))
        run = torch.inference_mode()(functools.partial(forward_in, autocast, model, x))
        times = timed_ms(run, args.warmup, args.runs)
        run_batch = functools.partial(forward_in, autocast, model)
        if args.dtype != "float32":  # against fp32 PyTorch, alternated in this process
            run_fp32 = torch.inference_mode()(functools.partial(forward_in, contextlib.nullcontext, model, x))
            extra = {"paired_speedup": paired_speedup(run_fp32, run, args.runs)}
        if not args.plain:  # the plain model against the accelerated one, alternated in this process
            run_plain = torch.inference_mode()(functools.partial(forward_in, autocast, plain, x))
            extra["vs_plain"] = paired_speedup(run_plain, run, args.runs)
    rss_after = proc.memory_info().rss
    # Read the high-water mark now, before the FLOP count and the probe's ~50 MB of matrices,
    # so it covers exactly build + inference of this size (ru_maxrss is KiB on Linux).
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    throughput = None
    if args.throughput_batch > 1 and run_batch is not None:  # images/s at a larger batch, after the peak RSS read
        batch = x.expand(args.throughput_batch, -1, -1, -1).contiguous()
        with torch.inference_mode():
            batch_ms = statistics.median(timed_ms(functools.partial(run_batch, batch), 1, max(3, args.runs // 3)))
        throughput = args.throughput_batch / (batch_ms / 1e3)

    # The FLOP counter sees aten matmuls only: count them on the plain model (same math).
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        plain(x)
    gflop = counter.get_total_flops() / 1e9
    paired = paired_efficiency(run, gflop, rounds=args.runs)
    del model, plain, run  # free its memory before the probe; the probe runs with the same thread count
    probe = matmul_probe_gflops(warmup=2, runs=max(5, args.runs // 2))

    median_ms = statistics.median(times)
    achieved = gflop / (median_ms / 1e3)
    best_probe = max(probe["torch"], probe["onednn"])
    return {
        "size": size, "dtype": args.dtype, "throughput_batch": args.throughput_batch, "images_per_s": throughput,
        "bf16_probe_gflops": probe["bf16"], "resolution": config.resolution, "threads": torch.get_num_threads(),
        "input": args.input, "warmup": args.warmup, "runs": args.runs,
        "params_m": params / 1e6, "gflop": gflop, "times_ms": times,
        "median_ms": median_ms, "min_ms": min(times), "max_ms": max(times),
        "achieved_gflops": achieved, "probe_gflops": probe["torch"], "efficiency": achieved / probe["torch"],
        "onednn_probe_gflops": probe["onednn"], "efficiency_vs_best": achieved / best_probe,
        "paired_efficiency": paired,
        # peak includes the interpreter, torch and the transient state-dict copy of fill_model_;
        # rss_before / rss_delta separate the baseline from what the model keeps resident.
        "peak_rss_mb": peak_rss_mb, "rss_before_mb": rss_before / 1e6,
        "rss_delta_mb": (rss_after - rss_before) / 1e6,
        "torch": torch.__version__, "accelerated": not args.plain, **extra,
    }


def write_1080p_photo(folder: str) -> str:
    from PIL import Image
    from skimage.data import astronaut

    path = f"{folder}/astronaut_1080p.jpg"
    Image.fromarray(astronaut()).resize((1920, 1080), Image.LANCZOS).save(path, quality=90)
    return path


def predict_worker(size: str, args: argparse.Namespace) -> dict:
    """Stage timings of ``predict()`` on a 1080p JPEG, PyTorch and ONNX Runtime, in this process."""

    import numpy as np

    from rfdetr.api import RFDETR
    from rfdetr.datasets.inputs import load_pixels
    from rfdetr.datasets.preprocess import resize_normalize
    from rfdetr.export import ONNXDetector
    from rfdetr.inference import to_detections

    torch.set_num_threads(args.threads)
    wrapper = RFDETR(size, pretrain_weights=None, device="cpu")
    fill_model_(wrapper.model, seed=0)
    side = wrapper.config.resolution
    median = lambda fn: statistics.median(timed_ms(fn, args.warmup, args.runs))  # noqa: E731
    with tempfile.TemporaryDirectory() as folder:
        path = write_1080p_photo(folder)
        pixels = load_pixels(path)
        batch = resize_normalize(pixels, side, side)[None]
        sizes = torch.tensor([tuple(pixels.shape[-2:])])
        with torch.inference_mode():
            outputs = wrapper.model(batch)
            times = {
                "decode_ms": median(lambda: load_pixels(path)),
                "preprocess_ms": median(lambda: resize_normalize(pixels, side, side)),
                "model_ms": median(lambda: wrapper.model(batch)),
                "postprocess_ms": median(lambda: to_detections(
                    wrapper.postprocess(outputs, sizes, class_rows=wrapper.classes.class_rows), 0.5,
                    wrapper.class_names)),
            }
        times["predict_ms"] = median(lambda: wrapper.predict(path))
        onnx = ONNXDetector(wrapper.export(folder, verify=False))
        feed = {"images": batch.numpy()}
        times["onnx_model_ms"] = median(lambda: onnx.session.run(None, feed))
        times["onnx_predict_ms"] = median(lambda: onnx.predict(path))
        ours, theirs = wrapper.predict(path, threshold=0.0), onnx.predict(path, threshold=0.0)
    count = min(len(ours), len(theirs), 100)
    return {
        "size": size, "resolution": side, "threads": torch.get_num_threads(), "photo": "1920x1080 JPEG", **times,
        "stages_pct": 100 * (times["decode_ms"] + times["preprocess_ms"] + times["postprocess_ms"]) / times["model_ms"],
        "overhead_pct": 100 * (times["predict_ms"] / times["model_ms"] - 1),
        "onnx_overhead_pct": 100 * (times["onnx_predict_ms"] / times["onnx_model_ms"] - 1),
        "onnx_vs_torch_predict": times["onnx_predict_ms"] / times["predict_ms"],
        "onnx_max_score_diff_top100": float(np.abs(ours.confidence[:count] - theirs.confidence[:count]).max()),
        "onnx_same_classes_top100": bool((ours.class_id[:count] == theirs.class_id[:count]).all()),
    }


def predict_table(r: dict) -> str:
    rows = [("file decode (OpenCV, 1920x1080 JPEG)", r["decode_ms"]),
            (f"preprocess (resize to {r['resolution']}, normalise)", r["preprocess_ms"]),
            ("model forward, PyTorch", r["model_ms"]),
            ("post-process + Detections", r["postprocess_ms"]),
            ("**predict(path), PyTorch**", r["predict_ms"]),
            ("model forward, ONNX Runtime", r["onnx_model_ms"]),
            ("**predict(path), ONNX Runtime**", r["onnx_predict_ms"])]
    lines = ["| stage | median ms |", "|---|---|"] + [f"| {name} | {ms:.1f} |" for name, ms in rows]
    lines.append(f"\nDecode + preprocess + post-process = {r['stages_pct']:.1f}% of the PyTorch model time. "
                 f"PyTorch predict() overhead over the model: {r['overhead_pct']:.1f}%; ONNX Runtime: "
                 f"{r['onnx_overhead_pct']:.1f}%; ONNX Runtime predict / PyTorch predict = "
                 f"{r['onnx_vs_torch_predict']:.2f}; top-100 scores differ by <= "
                 f"{r['onnx_max_score_diff_top100']:.1e}, same classes: {r['onnx_same_classes_top100']}")
    return "\n".join(lines)


def run_in_subprocess(size: str, args: argparse.Namespace, mode: str = "--_worker") -> dict:
    """Run one size in a fresh interpreter so that its peak RSS is its own, not a predecessor's."""
    cmd = [sys.executable, __file__, mode, size, "--threads", str(args.threads), "--_dtype", args.dtype,
           *(["--plain"] if args.plain else []), *(["--emulated_bf16"] if args.emulated_bf16 else []),
           "--throughput_batch", str(args.throughput_batch),
           "--warmup", str(args.warmup), "--runs", str(args.runs), "--input", args.input]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"worker for {size!r} failed (exit {done.returncode}):\n{done.stderr}")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if not lines:
        sys.exit(f"worker for {size!r} printed no result:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def markdown_table(results: list[dict]) -> str:
    header = ["size", "dtype", "model", "vs fp32", "vs fp32, alternated", "vs plain, alternated", "resolution",
              "params (M)", "GFLOP", "median ms",
              "min ms", "max ms",
              "achieved GFLOP/s", "a @ b probe GFLOP/s", "efficiency (vs a @ b)", "oneDNN probe GFLOP/s",
              "vs best fp32 probe", "paired efficiency", "bf16 probe GFLOP/s", "images/s at batch N", "peak RSS (MB)"]
    fp32 = {r["size"]: r["median_ms"] for r in results if r["dtype"] == "float32"}
    rows = [[r["size"], r["dtype"], "accelerated" if r.get("accelerated", True) else "plain",
             f"{fp32[r['size']] / r['median_ms']:.2f}x" if r["size"] in fp32 else "",
             f"{r['paired_speedup']:.2f}x" if "paired_speedup" in r else "-",
             f"{r['vs_plain']:.2f}x" if "vs_plain" in r else "-",
             str(r["resolution"]), f"{r['params_m']:.1f}", f"{r['gflop']:.1f}",
             f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}", f"{r['max_ms']:.1f}",
             f"{r['achieved_gflops']:.1f}", f"{r['probe_gflops']:.1f}", f"{r['efficiency']:.1%}",
             f"{r['onednn_probe_gflops']:.1f}", f"{r['efficiency_vs_best']:.1%}", f"{r['paired_efficiency']:.1%}",
             f"{r['bf16_probe_gflops']:.1f}",
             f"{r['images_per_s']:.2f} (N={r['throughput_batch']})" if r.get("images_per_s") else "-",
             f"{r['peak_rss_mb']:.0f}"] for r in results]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    for r in results:
        if r["dtype"] == "int8":
            lines.append(f"\n{r['size']} int8 row: ONNX Runtime int8 {r['median_ms']:.1f} ms vs ONNX Runtime fp32 "
                         f"{r['onnx_fp32_ms']:.1f} ms = {r['onnx_fp32_ms'] / r['median_ms']:.2f}x (alternated: "
                         f"{r['paired_speedup']:.2f}x); max |logit "
                         f"difference| int8 vs fp32 {r['int8_max_logit_diff']:.2f} (accuracy: "
                         f"bench_precision_accuracy.py on a trained checkpoint)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES),
                        help="model sizes to benchmark, each at its native resolution (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads value (default: 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forward passes first (default: 3)")
    parser.add_argument("--runs", type=int, default=10, help="timed forward passes (default: 10)")
    parser.add_argument("--input", choices=("photo", "random"), default="photo",
                        help="model input: the preprocessed skimage astronaut photo, or torch.randn "
                             "(default: photo)")
    parser.add_argument("--predict_size", choices=SIZES, default="nano",
                        help="size for the end-to-end predict() timing (default: nano)")
    parser.add_argument("--skip_predict", action="store_true", help="skip the end-to-end predict() timing")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16", "int8"), default=["float32"],
                        help="precisions to measure each size in (bfloat16: a bf16 autocast, as "
                             "RFDETR*(dtype='bfloat16'); needs a CPU with AVX-512 BF16 or AMX; int8: the "
                             "export(quantize='int8') model on ONNX Runtime, beside the fp32 ONNX model)")
    parser.add_argument("--throughput_batch", type=int, default=8,
                        help="also measure images/s at this batch size (1: skip; default: 8)")
    parser.add_argument("--plain", action="store_true",
                        help="time the plain model, without rfdetr.accel.accelerate (default: accelerated, "
                             "with the plain model alternated beside it)")
    parser.add_argument("--emulated_bf16", action="store_true",
                        help="run bfloat16 rows on a CPU without native bf16 (PyTorch emulates it)")
    parser.add_argument("--json", metavar="PATH", help="also write all results to this JSON file")
    parser.add_argument("--_dtype", dest="dtype", default="float32", help=argparse.SUPPRESS)
    # Internal: run a single size in this process and print its result as one JSON line.
    parser.add_argument("--_worker", metavar="SIZE", choices=SIZES, help=argparse.SUPPRESS)
    parser.add_argument("--_predict_worker", metavar="SIZE", choices=SIZES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--runs and --threads must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._worker:
        print(RESULT_PREFIX + json.dumps(worker(args._worker, args)), flush=True)
        return
    if args._predict_worker:
        print(RESULT_PREFIX + json.dumps(predict_worker(args._predict_worker, args)), flush=True)
        return
    results = []
    for size in args.sizes:
        for dtype in args.dtypes:
            print(f"benchmarking {size} in {dtype} ...", file=sys.stderr, flush=True)
            results.append(run_in_subprocess(size, argparse.Namespace(**{**vars(args), "dtype": dtype})))
    flags = " ".join(sorted(cpu_flags() & set(CPU_FLAGS_OF_INTEREST))) or "none of " + " ".join(CPU_FLAGS_OF_INTEREST)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 1, eval, input={args.input}, "
          f"{args.warmup} warm-up + {args.runs} timed runs; CPU flags: {flags}\n")
    print(markdown_table(results))
    report = {"model": results}
    if not args.skip_predict:
        print(f"benchmarking predict() for {args.predict_size} ...", file=sys.stderr, flush=True)
        report["predict"] = run_in_subprocess(args.predict_size, args, mode="--_predict_worker")
        print(f"\nEnd-to-end predict() on a 1080p JPEG, {args.predict_size}:\n")
        print(predict_table(report["predict"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
