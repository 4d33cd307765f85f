"""CPU benchmark of one training optimizer step, one configuration per fresh process.

Run from the repository root (on a quiet machine; the default run takes a few minutes)::

    .venv/bin/python benchmarks/bench_train.py --threads 2 --warmup 2 --steps 5 --json bench_train.json

One optimizer step is what the training loop does per step with ``grad_accum_steps=1``: forward in
train mode (all ``group_detr`` query groups), the criterion (every decoder layer and the two-stage
proposals Hungarian-matched), the weighted loss, backward, ``clip_grad_norm_(0.1)``, the AdamW step
(the real parameter groups of :func:`rfdetr.training.optim.build_optimizer`) and ``zero_grad``.
fp32 on CPU, ``torch.set_num_threads(N)``, the model accelerated as the trainer does
(:func:`rfdetr.accel.accelerate`), in a retained heap as the training scripts' CPU steps
(:mod:`rfdetr.util.heap`; ``RFDETR_CPU_HEAP=system`` measures without it).

The batch is fixed and built before timing: synthetic COCO images loaded with the deterministic
evaluation transforms (``train=False``: a plain resize to ``resolution x resolution``), so data
loading and augmentation are not timed. Weights are deterministic fills (``fill_model_``).

Reports median/min/max seconds per step, the peak RSS of the process (``ru_maxrss``) and its RSS
before the model was built, parameter counts, and the loss of the first step as a sanity check.
With ``--upstream-python PATH`` (a side venv with ``rfdetr==1.2.1``) upstream's nano step runs on the
same batch in the same invocation (``upstream_train_step.py``), and the table gives each detector
row's time and peak RSS as ratios to it; without it the figures are absolute only (ratios to a
number measured on another host would mislead: figures move with the host).

Configurations are named rows of :data:`CONFIGURATIONS`; each runs in its own interpreter so that
its peak RSS is its own. A later configuration (e.g. the segmentation stage) adds a row with its
own builder of ``(model, criterion)``.

``--masks`` benchmarks the stage-2 step instead (mask head on a frozen nano detector, batch 2 at
384 px; about 25 minutes)::

    .venv/bin/python benchmarks/bench_train.py --masks --warmup 1 --steps 3 --json bench_masks.json

The frozen detector runs in eval mode (one group of 300 queries) and only the mask head trains.
Three ways to pick the queries that get a mask, for each mask head (light, then detr):

- ``masks-matched``: the real stage-2 criterion (detection terms + ``add_mask_losses``): masks only
  for the Hungarian-matched queries, a handful per image;
- ``masks-300``: the same loss over all 300 queries of each image (all-zero targets for the
  unmatched ones), :class:`AllQueryMaskLoss`;
- ``masks-3900``: the fork's cost: its detector stayed in train mode, so all 13 x 300 query slots
  of each image got a mask. Emulated with query indices 0..299 repeated 13 times per image.

``mask_chunk`` does not bound training memory (every chunk's activations are kept for backward),
so masks-3900 needs tens of GB. Each stage-2 worker is watched: at ``--mask_rss_limit_gb`` of RSS
or ``--mask_time_limit_s`` of wall time it is stopped, and a row with ``fallback_slots`` is then
measured at those smaller numbers of query slots per image and extrapolated linearly in the
number of mask pairs (marked as such in the table). Stage-2 ratios compare the matched row of the
same mask head with the others (target vs masks-3900: >= 5x faster, <= 0.5x peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import psutil
import torch
from torch import nn

from rfdetr.accel import accelerate
from rfdetr.config import ModelConfig, TrainConfig, mask_config, model_config
from rfdetr.datasets import build_dataset, collate_fn, make_synthetic_coco
from rfdetr.models import DETRsegm, SetCriterion, build_criterion, build_detector
from rfdetr.models.mask_geometry import valid_cells, valid_fractions
from rfdetr.models.mask_losses import add_mask_losses, dense_pair, dice_per_mask, sigmoid_ce_per_mask
from rfdetr.models.matcher import ImageMatch
from rfdetr.training.optim import build_optimizer
from rfdetr.util.heap import retained_heap
from rfdetr.util.precision import autocast_for
from rfdetr.util.weight_fill import fill_model_

# The worker prints its result on one line with this prefix, so stray prints from the model
# code or libraries on stdout cannot be mistaken for the result.
RESULT_PREFIX = "BENCH_RESULT "

# Targets against upstream rfdetr 1.2.1 measured in the same invocation (--upstream-python):
# <= 0.8x its time per step and <= 0.8x its peak RSS, in the same configuration.
TARGET_RATIO = 0.8
UPSTREAM_DRIVER = Path(__file__).with_name("upstream_train_step.py")


# ---- configurations ------------------------------------------------------------------------------
def build_detection(config: ModelConfig, train_config: TrainConfig) -> tuple[nn.Module, SetCriterion]:
    """The stage-1 detector and its criterion, as the trainer builds them."""
    model = fill_model_(build_detector(config), seed=0)
    return model, build_criterion(config, train_config)


class AllQueryMaskLoss:
    """A ``"masks"`` term with the fork's cost: a mask for every query slot of every image.

    ``query_slots`` slots per image; slot ``s`` asks for the mask of query ``s % Q`` (``Q`` queries
    in the outputs), so ``query_slots = 13 * Q`` costs what 13 query groups in train mode cost.
    Slots of a matched query get its target mask (in every repeat, as each of the fork's groups
    had its own match), all others an all-zero target. Loss as :class:`MaskLoss`'s dense mode:
    mean BCE and Dice per mask on the image's cells, summed over all slots / ``num_boxes``.
    """

    def __init__(self, query_slots: int):
        self.query_slots = query_slots

    def __call__(self, outputs: dict, targets: Sequence[dict], indices: Sequence[ImageMatch],
                 num_boxes: float, log: bool = True, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        context = outputs.get("mask_context")
        if context is None:  # aux / encoder outputs carry no masks
            return {}
        batch, num_queries = context.query_features.shape[:2]
        device = context.query_features.device
        slot_query = torch.arange(self.query_slots, device=device) % num_queries
        batch_index = torch.arange(batch, device=device).repeat_interleave(self.query_slots)
        logits = model.predict_masks(context, batch_index, slot_query.repeat(batch)).float()
        fractions = valid_fractions(context.image_mask, torch.stack([t["size"] for t in targets]))
        mask_terms, dice_terms = [], []
        for image, (target, (queries, target_index)) in enumerate(zip(targets, indices)):
            image_logits = logits[image * self.query_slots:(image + 1) * self.query_slots]
            _, cell_count = valid_cells(fractions[image], image_logits.shape[-2:])
            cols, rows = cell_count.long().tolist()
            predictions = image_logits[:, :rows, :cols].flatten(1)
            cell_targets = torch.zeros_like(predictions)
            if len(queries):
                # dense_pair crops and area-averages the matched targets exactly as MaskLoss does.
                _, matched = dense_pair(image_logits[:len(queries)], target["masks"].to(device)[target_index],
                                        fractions[image])
                position = torch.full((num_queries,), -1, dtype=torch.long, device=device)
                position[queries] = torch.arange(len(queries), device=device)
                slot_position = position[slot_query]
                cell_targets[slot_position >= 0] = matched[slot_position[slot_position >= 0]]
            mask_terms.append(sigmoid_ce_per_mask(predictions, cell_targets))
            dice_terms.append(dice_per_mask(predictions, cell_targets))
        return {"loss_mask": torch.cat(mask_terms).sum() / num_boxes,
                "loss_dice": torch.cat(dice_terms).sum() / num_boxes}


@dataclass(frozen=True)
class Stage2Build:
    """Builder of the stage-2 ``(model, criterion)``, as :func:`rfdetr.training.stages.build_trainer`
    builds them for a frozen detector (one query group, no aux losses) with ``add_mask_losses``.

    query_slots: ``None`` keeps the real term (matched queries only); an int replaces it by
    :class:`AllQueryMaskLoss` with that many query slots per image (same weights).
    """

    mask_head: str = "light"
    query_slots: int | None = None

    def __call__(self, config: ModelConfig, train_config: TrainConfig) -> tuple[nn.Module, SetCriterion]:
        model = DETRsegm(fill_model_(build_detector(config), seed=0), freeze_detr=True, mask_head=self.mask_head)
        criterion = build_criterion(config, train_config, frozen_detector=True)
        mask = mask_config(config.size)  # the default loss weights
        add_mask_losses(criterion, mask.mask_loss_coef, mask.dice_loss_coef)
        if self.query_slots is not None:
            criterion.register_loss("masks", AllQueryMaskLoss(self.query_slots))  # keeps the weights
        return model, criterion


def count_mask_pairs(model: nn.Module) -> list[int]:
    """Wrap ``model.predict_masks`` so that the returned list records the pairs of every call."""
    counts: list[int] = []
    predict = model.predict_masks

    def counted(mask_context, batch_index: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
        counts.append(batch_index.numel())
        return predict(mask_context, batch_index, query_index)

    model.predict_masks = counted
    return counts


@dataclass(frozen=True)
class Configuration:
    """One benchmarked training setup: a model size and how to build its model and criterion."""

    size: str
    description: str
    build: Callable[[ModelConfig, TrainConfig], tuple[nn.Module, SetCriterion]] = build_detection
    masks: bool = False  # load instance masks with the targets (a segmentation stage needs them)
    model_overrides: tuple[tuple[str, object], ...] = ()  # ModelConfig fields for this row
    compare_upstream: bool = True  # upstream's nano step (--upstream-python) is the same setup
    stage: int = 1  # 1: detector rows (the default run); 2: mask-head rows (--masks)
    # stage 2: query slots per image to measure and extrapolate from when the row is stopped at a limit
    fallback_slots: tuple[int, ...] = ()


CONFIGURATIONS: dict[str, Configuration] = {
    "nano": Configuration("nano", "detector, 13 query groups, aux + two-stage losses (defaults)"),
    "nano-ckpt": Configuration("nano", "same with gradient_checkpointing=True (ViT blocks recomputed in "
                                       "backward: less memory, slower steps)",
                               model_overrides=(("gradient_checkpointing", True),)),
}


def _mask_rows(head: str, suffix: str, fallback_slots: tuple[int, int]) -> dict[str, Configuration]:
    """The three stage-2 rows of one mask head (see the module docstring)."""
    def row(description: str, query_slots: int | None, fallback: tuple[int, ...] = ()) -> Configuration:
        return Configuration("nano", f"{head} mask head on a frozen nano detector: {description}",
                             build=Stage2Build(head, query_slots), masks=True, compare_upstream=False, stage=2,
                             fallback_slots=fallback)

    return {f"masks-matched{suffix}": row("real stage-2 criterion, masks for matched queries only", None),
            f"masks-300{suffix}": row("masks for all 300 queries of each image", 300),
            f"masks-3900{suffix}": row("masks for 13 x 300 query slots per image (the fork)", 13 * 300,
                                       fallback_slots)}


# masks-3900 needs ~3.6 MB (light head) / ~11 MB (detr head) per mask pair kept for backward: ~28 / ~86 GB.
# The fallback points stay under ~9 / ~12 GB and span a 3x range so the linear fit is not dominated by noise.
CONFIGURATIONS.update(_mask_rows("light", "", fallback_slots=(300, 900)))
CONFIGURATIONS.update(_mask_rows("detr", "-detr", fallback_slots=(150, 450)))


# ---- measurement ---------------------------------------------------------------------------------
def fixed_batch(folder: str, resolution: int, batch: int, masks: bool):
    """``(samples, targets, class_rows)``: the first ``batch`` synthetic training images, collated."""
    make_synthetic_coco(folder, num_train=max(4, batch), num_valid=1, num_test=0,
                        image_size=(resolution, resolution))
    dataset = build_dataset(folder, "train", resolution=resolution, train=False, masks=masks)
    samples, targets = collate_fn([dataset[i] for i in range(batch)])
    return samples, targets, dataset.classes.num_rows


def worker(name: str, args: argparse.Namespace) -> dict:
    """Measure configuration ``name`` in this process; returns a JSON-serialisable dict."""
    setup = CONFIGURATIONS[name]
    build = setup.build
    if args._query_slots is not None:  # a fallback point of a stage-2 row
        build = replace(build, query_slots=args._query_slots)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_config = TrainConfig()
    with tempfile.TemporaryDirectory() as folder:
        samples, targets, num_rows = fixed_batch(folder, args.resolution, args.batch, setup.masks)
    proc = psutil.Process()
    rss_before = proc.memory_info().rss  # after imports and data, so what follows is the model's share

    config = model_config(setup.size, num_classes=num_rows - 1, resolution=args.resolution,
                          **dict(setup.model_overrides))
    model, criterion = build(config, train_config)
    accelerate(model, "cpu", args.precision)  # the CPU speed paths, as the trainer applies them
    mask_pairs = count_mask_pairs(model) if setup.stage == 2 else []
    model.train()
    criterion.train()
    optimizer = build_optimizer(model.named_parameters(), config, train_config)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    rss_built = proc.memory_info().rss

    losses: list[float] = []
    grad_norms: list[float] = []

    autocast, _ = autocast_for(torch.device("cpu"), args.precision)

    def step() -> None:
        with autocast():  # as the training loop: forward and criterion under the run's precision
            outputs = model(samples)
            loss = criterion.weighted_loss(criterion(outputs, targets, model=model))
        loss.backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(parameters, train_config.clip_max_norm)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    times, cpu_times, pairs_per_step = [], [], []
    with retained_heap() as heap_retained:  # as the trainer runs its CPU steps
        for _ in range(args.warmup):  # the first steps allocate AdamW state and grow the allocator
            step()
        load_before = os.getloadavg()[0]
        for _ in range(args.steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            pairs_before = sum(mask_pairs)
            step()
            pairs_per_step.append(sum(mask_pairs) - pairs_before)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux

    median_s = statistics.median(times)
    result = {
        "name": name, "precision": args.precision, "size": setup.size, "description": setup.description,
        "batch": args.batch,
        "resolution": args.resolution, "threads": torch.get_num_threads(), "warmup": args.warmup,
        "steps": args.steps, "group_detr": config.group_detr, "num_queries": config.num_queries,
        "dec_layers": config.dec_layers, "num_classes": config.num_classes,
        "targets_per_image": [len(t["labels"]) for t in targets],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in parameters) / 1e6,
        "param_groups": len(optimizer.param_groups),
        "first_loss": losses[0], "losses": losses, "first_grad_norm": grad_norms[0],
        "times_s": times, "median_s": median_s, "min_s": min(times), "max_s": max(times),
        # CPU seconds of all threads / (wall seconds x threads): well below 1 with a timing far above
        # its minimum means other processes took the cores (the load average says how busy it was).
        "cpu_utilisation": sum(cpu_times) / (sum(times) * torch.get_num_threads()),
        "load_avg_1m": [load_before, os.getloadavg()[0]], "cpu_count": os.cpu_count(),
        # peak includes the interpreter, torch, the data and fill_model_'s transient copy;
        # rss_before separates that baseline from what building and training add.
        "peak_rss_mb": peak_rss_mb, "rss_before_mb": rss_before / 1e6, "rss_built_mb": rss_built / 1e6,
        "rss_after_mb": proc.memory_info().rss / 1e6,
        # the figures are for batch 2 at 384 px only
        "compare_upstream": setup.compare_upstream,
        "torch": torch.__version__, "heap_retained": heap_retained,
    }
    if setup.stage == 2:
        result.update({"stage": 2, "mask_head": build.mask_head, "query_slots": build.query_slots,
                       "mask_pairs_per_step": statistics.median(pairs_per_step)})
    return result


def worker_command(name: str, args: argparse.Namespace) -> list[str]:
    return [sys.executable, __file__, "--_worker", name, "--threads", str(args.threads),
            "--warmup", str(args.warmup), "--steps", str(args.steps), "--batch", str(args.batch),
            "--resolution", str(args.resolution), "--precision", args.precision]


def parse_worker_output(name: str, returncode: int, stdout: str, stderr: str) -> dict:
    if returncode != 0:
        sys.exit(f"worker for {name!r} failed (exit {returncode}):\n{stderr}")
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if not lines:
        sys.exit(f"worker for {name!r} printed no result:\n{stdout}\n{stderr}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def run_in_subprocess(name: str, args: argparse.Namespace) -> dict:
    """Run one configuration in a fresh interpreter so that its peak RSS is its own."""
    done = subprocess.run(worker_command(name, args), capture_output=True, text=True)
    return parse_worker_output(name, done.returncode, done.stdout, done.stderr)


class WorkerStopped(Exception):
    """A watched worker was stopped at a limit; ``peak_rss_mb`` and ``elapsed_s`` are what it reached."""

    def __init__(self, reason: str, peak_rss_mb: float, elapsed_s: float):
        super().__init__(f"{reason} (RSS reached {peak_rss_mb:.0f} MB after {elapsed_s:.0f} s)")
        self.reason, self.peak_rss_mb, self.elapsed_s = reason, peak_rss_mb, elapsed_s


# Stop a worker early when the machine itself runs short, whatever its own limit: others share it.
MIN_AVAILABLE_MB = 1000.0


def run_watched(name: str, args: argparse.Namespace, query_slots: int | None = None) -> dict:
    """:func:`run_in_subprocess` under the stage-2 limits: the worker is killed (``WorkerStopped``)
    at ``--mask_rss_limit_gb`` of RSS, ``--mask_time_limit_s`` of wall time, or when the machine has
    less than ``MIN_AVAILABLE_MB`` available. ``query_slots`` overrides the row's slots per image."""
    rss_limit_mb, time_limit_s = args.mask_rss_limit_gb * 1000, args.mask_time_limit_s
    command = worker_command(name, args) + ([] if query_slots is None else ["--_query_slots", str(query_slots)])
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        worker_process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        watched = psutil.Process(worker_process.pid)
        start, peak_mb, reason = time.perf_counter(), 0.0, None
        while worker_process.poll() is None:
            try:
                peak_mb = max(peak_mb, watched.memory_info().rss / 1e6)
            except psutil.NoSuchProcess:  # exited between poll() and the reading
                break
            elapsed = time.perf_counter() - start
            if peak_mb > rss_limit_mb:
                reason = f"over the {rss_limit_mb / 1000:g} GB RSS limit"
            elif elapsed > time_limit_s:
                reason = f"over the {time_limit_s:g} s time limit"
            elif psutil.virtual_memory().available / 1e6 < MIN_AVAILABLE_MB:
                reason = f"the machine had less than {MIN_AVAILABLE_MB:.0f} MB available"
            if reason:
                worker_process.kill()
                worker_process.wait()
                raise WorkerStopped(reason, peak_mb, elapsed)
            time.sleep(0.2)
        stdout.seek(0)
        stderr.seek(0)
        return parse_worker_output(name, worker_process.returncode, stdout.read(), stderr.read())


def linear_at(x: float, points: list[tuple[float, float]]) -> float:
    """The line through two ``(x, y)`` points, evaluated at ``x``."""
    (x1, y1), (x2, y2) = points
    return y1 + (y2 - y1) / (x2 - x1) * (x - x1)


def measure_mask_row(name: str, args: argparse.Namespace, measured: dict) -> dict:
    """One stage-2 row: measured, or extrapolated from its ``fallback_slots`` when stopped, or failed.

    measured: results by ``(size, overrides, build)``, shared by the rows of one run, so that a
    fallback point equal to another row (masks-3900 at 300 slots is masks-300) is measured once.
    """
    setup = CONFIGURATIONS[name]

    def measure(query_slots: int | None = None) -> dict:
        build = setup.build if query_slots is None else replace(setup.build, query_slots=query_slots)
        key = (setup.size, setup.model_overrides, build)
        if key not in measured:
            measured[key] = run_watched(name, args, query_slots)
        return measured[key]

    row = {"name": name, "stage": 2, "size": setup.size, "description": setup.description, "batch": args.batch,
           "resolution": args.resolution, "mask_head": setup.build.mask_head,
           "query_slots": setup.build.query_slots}
    if setup.build.query_slots is not None:
        row["mask_pairs_per_step"] = args.batch * setup.build.query_slots
    try:
        return {**measure(), "name": name, "description": setup.description}
    except WorkerStopped as stop:
        row["attempt"] = {"reason": stop.reason, "peak_rss_mb": stop.peak_rss_mb, "elapsed_s": stop.elapsed_s}
        print(f"  {name}: stopped, {stop}", file=sys.stderr, flush=True)
    if len(setup.fallback_slots) != 2:
        return {**row, "failed": True, "peak_rss_mb": row["attempt"]["peak_rss_mb"]}
    points = []
    for query_slots in setup.fallback_slots:
        print(f"  {name}: measuring {query_slots} query slots per image to extrapolate", file=sys.stderr, flush=True)
        try:
            points.append(measure(query_slots))
        except WorkerStopped as stop:
            row["fallback_stopped"] = {"query_slots": query_slots, "reason": stop.reason,
                                       "peak_rss_mb": stop.peak_rss_mb, "elapsed_s": stop.elapsed_s}
            return {**row, "failed": True, "peak_rss_mb": row["attempt"]["peak_rss_mb"]}
    # Time and peak RSS are fitted as a + b * mask pairs per step.
    pairs = row["mask_pairs_per_step"]
    fit = {key: linear_at(pairs, [(p["mask_pairs_per_step"], p[key]) for p in points])
           for key in ("median_s", "peak_rss_mb")}
    # A point that is not above the smaller one (noise, a busy machine) makes the line meaningless.
    fit["unreliable"] = [key for key in ("median_s", "peak_rss_mb") if points[1][key] <= points[0][key]]
    invariant = ("threads", "warmup", "steps", "num_queries", "num_classes", "targets_per_image", "params_m",
                 "trainable_m", "param_groups", "rss_before_mb", "cpu_count", "torch")
    return {**{key: points[0][key] for key in invariant}, **row, **fit, "extrapolated": True,
            "load_avg_1m": [max(p["load_avg_1m"]) for p in points],
            "points": [{key: p[key] for key in ("query_slots", "mask_pairs_per_step", "median_s", "min_s", "max_s",
                                                "peak_rss_mb", "rss_before_mb", "first_loss")} for p in points]}


# ---- report --------------------------------------------------------------------------------------
def _yes_no(ok: bool) -> str:
    return "yes" if ok else "no"


def run_upstream(args: argparse.Namespace) -> dict:
    """Upstream's nano training step on the batch the project's workers use, in the side venv, from a
    scratch folder (so that its ``import rfdetr`` is upstream's); see ``upstream_train_step.py``."""
    with tempfile.TemporaryDirectory() as scratch:
        samples, targets, num_rows = fixed_batch(str(Path(scratch) / "data"), args.resolution, args.batch, False)
        batch_file = Path(scratch) / "batch.pt"
        torch.save({"images": samples.tensors, "mask": samples.mask, "targets": targets}, batch_file)
        settings = {"threads": args.threads, "warmup": args.warmup, "steps": args.steps, "num_classes": num_rows - 1,
                    "resolution": args.resolution}
        done = subprocess.run([args.upstream_python, str(UPSTREAM_DRIVER), str(batch_file), json.dumps(settings)],
                              cwd=scratch, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.exit(f"upstream step failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def reference_note(upstream: dict | None) -> str:
    if upstream is None:
        return ("no upstream run (--upstream-python not given): absolute figures only; ratios to upstream are "
                "only meaningful when measured in the same run on the same host")
    return (f"upstream rfdetr 1.2.1 nano in this run, same batch: {upstream['median_s']:.2f} s/step (median), "
            f"peak RSS {upstream['peak_rss_mb']:.0f} MB, first loss {upstream['first_loss']:.3f}; "
            f"targets <= {TARGET_RATIO}x time and <= {TARGET_RATIO}x memory")


def markdown_table(results: list[dict]) -> str:
    header = ["configuration", "batch", "resolution", "params (M)", "trainable (M)", "first loss",
              "median s/step", "min s", "max s", "CPU util", "time / upstream", "peak RSS (MB)",
              "RSS before model (MB)", "memory / upstream", "targets (time, memory)"]
    rows = []
    for r in results:
        comparable = "time_vs_upstream" in r
        rows.append([
            r["name"], str(r["batch"]), str(r["resolution"]), f"{r['params_m']:.2f}", f"{r['trainable_m']:.2f}",
            f"{r['first_loss']:.3f}", f"{r['median_s']:.2f}", f"{r['min_s']:.2f}", f"{r['max_s']:.2f}",
            f"{r['cpu_utilisation']:.0%}",
            f"{r['time_vs_upstream']:.2f}x" if comparable else "-", f"{r['peak_rss_mb']:.0f}",
            f"{r['rss_before_mb']:.0f}", f"{r['memory_vs_upstream']:.2f}x" if comparable else "-",
            f"{_yes_no(r['meets_time_target'])}, {_yes_no(r['meets_memory_target'])}" if comparable else "-",
        ])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or denominator is None else numerator / denominator


def matched_row(results: list[dict], row: dict) -> dict | None:
    """The masks-matched row with the same mask head as ``row`` (the reference of its ratios)."""
    return next((r for r in results if r["mask_head"] == row["mask_head"] and r["query_slots"] is None
                 and not r.get("failed")), None)


def mask_ratios(results: list[dict], row: dict) -> tuple[float | None, float | None]:
    """``(speed-up, memory ratio)`` of the matched row against ``row``: its time / matched time and
    matched peak RSS / its peak RSS (``None`` where unknown)."""
    matched = matched_row(results, row)
    if matched is None or row.get("failed"):
        return None, None
    return _ratio(row["median_s"], matched["median_s"]), _ratio(matched["peak_rss_mb"], row["peak_rss_mb"])


def _number(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def mask_markdown_table(results: list[dict]) -> str:
    header = ["configuration", "mask head", "query slots / image", "mask pairs / step", "trainable (M)",
              "first loss", "median s/step", "min s", "max s", "CPU util", "peak RSS (MB)", "RSS before model (MB)",
              "matched: x faster", "matched: x memory"]
    rows = []
    for r in results:
        name = r["name"] + (" (extrapolated)" if r.get("extrapolated") else " (failed)" if r.get("failed") else "")
        speedup, memory = mask_ratios(results, r)
        failed = r.get("failed")
        rows.append([
            name, r["mask_head"], "matched" if r["query_slots"] is None else str(r["query_slots"]),
            _number(r.get("mask_pairs_per_step"), ".0f"), _number(r.get("trainable_m"), ".3f"),
            _number(r.get("first_loss"), ".3f"),
            f"killed after {r['attempt']['elapsed_s']:.0f} s" if failed else _number(r["median_s"], ".2f"),
            _number(r.get("min_s"), ".2f"), _number(r.get("max_s"), ".2f"),
            _number(r.get("cpu_utilisation"), ".0%"),
            f">= {r['peak_rss_mb']:.0f} (killed)" if failed else f"{r['peak_rss_mb']:.0f}",
            _number(r.get("rss_before_mb"), ".0f"), _number(speedup, ".2f", "x"), _number(memory, ".2f", "x"),
        ])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def mask_notes(results: list[dict]) -> list[str]:
    """The targets (matched vs masks-3900), the comparison with masks-300, and how rows were obtained."""
    notes = []
    for r in results:
        if r["query_slots"] is None:
            continue
        speedup, memory = mask_ratios(results, r)
        matched = matched_row(results, r)
        label = f"{matched['name'] if matched else 'masks-matched'} vs {r['name']}"
        if r.get("failed"):
            notes.append(f"{label}: no comparison, {r['name']} failed (killed at {r['peak_rss_mb']:.0f} MB RSS after "
                         f"{r['attempt']['elapsed_s']:.0f} s, {r['attempt']['reason']}"
                         + (f"; fallback at {r['fallback_stopped']['query_slots']} slots also stopped, "
                            f"{r['fallback_stopped']['reason']} at {r['fallback_stopped']['peak_rss_mb']:.0f} MB"
                            if "fallback_stopped" in r else "") + ").")
            continue
        if speedup is None:
            continue
        line = f"{label}: {speedup:.1f}x faster, {memory:.2f}x the peak RSS"
        if r["query_slots"] == 13 * r["num_queries"]:
            line += (f" (target >= 5x faster: {_yes_no(speedup >= 5)}; <= 0.5x memory: {_yes_no(memory <= 0.5)})")
        notes.append(line + ".")
    for r in results:
        if r.get("extrapolated"):
            points = "; ".join(f"{p['query_slots']} slots/image = {p['mask_pairs_per_step']:.0f} pairs: "
                               f"{p['median_s']:.2f} s/step, {p['peak_rss_mb']:.0f} MB" for p in r["points"])
            notes.append(f"{r['name']} is EXTRAPOLATED, not measured: the full run was stopped "
                         f"({r['attempt']['reason']}, "
                         f"RSS {r['attempt']['peak_rss_mb']:.0f} MB after {r['attempt']['elapsed_s']:.0f} s); "
                         f"median s/step and peak RSS are the line through [{points}] at "
                         f"{r['mask_pairs_per_step']:.0f} pairs."
                         + (f" UNRELIABLE: {' and '.join(r['unreliable'])} did not grow with the pairs (noisy points)."
                            if r["unreliable"] else ""))
    return notes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGURATIONS), default=None,
                        help="configurations to benchmark, each in its own process (default: all detector rows, "
                             "or with --masks all stage-2 rows)")
    parser.add_argument("--masks", action="store_true",
                        help="benchmark the stage-2 step (mask head on a frozen nano detector) instead of the "
                             "detector: masks for matched queries vs all 300 vs 13 x 300 query slots")
    parser.add_argument("--mask_rss_limit_gb", type=float, default=16.0,
                        help="stop a stage-2 worker at this RSS and extrapolate from smaller runs (default: 16)")
    parser.add_argument("--mask_time_limit_s", type=float, default=600.0,
                        help="stop a stage-2 worker after this many seconds, likewise (default: 600)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads value (default: 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first (default: 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (default: 5)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (default: 2, as in the issue)")
    parser.add_argument("--resolution", type=int, default=384,
                        help="square input side; a multiple of patch_size x num_windows (default: 384, "
                             "nano's native resolution)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="compute precision of the project's step (bf16: autocast, needs AVX-512 BF16 or AMX)")
    parser.add_argument("--upstream-python", default=None,
                        help="python of a side venv with rfdetr==1.2.1: time its nano step on the same batch in "
                             "this run and report the ratios (without it the table has absolute figures only)")
    parser.add_argument("--json", metavar="PATH", help="also write all results to this JSON file")
    # Internal: run a single configuration in this process and print its result as one JSON line.
    parser.add_argument("--_worker", metavar="NAME", choices=list(CONFIGURATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--_query_slots", type=int, help=argparse.SUPPRESS)  # a stage-2 fallback point
    args = parser.parse_args(argv)
    if args.configs is None:
        stage = 2 if args.masks else 1
        args.configs = [name for name, setup in CONFIGURATIONS.items() if setup.stage == stage]
    if args.steps < 1 or args.warmup < 0 or args.threads < 1 or args.batch < 1:
        parser.error("--steps, --threads and --batch must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._worker:
        print(RESULT_PREFIX + json.dumps(worker(args._worker, args)), flush=True)
        return
    results, mask_results, measured = [], [], {}
    for name in args.configs:
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        if CONFIGURATIONS[name].stage == 2:
            mask_results.append(measure_mask_row(name, args, measured))
        else:
            results.append(run_in_subprocess(name, args))
    upstream = None
    if args.upstream_python and results:
        print("benchmarking upstream rfdetr 1.2.1 ...", file=sys.stderr, flush=True)
        upstream = run_upstream(args)
        for r in results:
            if r["compare_upstream"]:
                r["time_vs_upstream"] = r["median_s"] / upstream["median_s"]
                r["memory_vs_upstream"] = r["peak_rss_mb"] / upstream["peak_rss_mb"]
                r["meets_time_target"] = r["time_vs_upstream"] <= TARGET_RATIO
                r["meets_memory_target"] = r["memory_vs_upstream"] <= TARGET_RATIO
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.precision}, train mode, batch {args.batch}, "
          f"resolution {args.resolution}, {args.warmup} warm-up + {args.steps} timed optimizer steps\n")
    if results:
        print(markdown_table(results))
    if mask_results:
        if results:
            print()
        print("Stage 2 (frozen detector in eval mode: one group of 300 queries; only the mask head trains):\n")
        print(mask_markdown_table(mask_results))
        for note in mask_notes(mask_results):
            print(f"\n{note}")
    for r in results + [r for r in mask_results if "load_avg_1m" in r]:
        load = max(r["load_avg_1m"])
        if load > max(r["cpu_count"], r["threads"]) + 0.5:  # the average includes this benchmark itself
            print(f"\nwarning: {r['name']}: 1-minute load average reached {load:.1f} on {r['cpu_count']} CPUs "
                  f"while timing; other processes were competing for the cores, so the times are inflated.")
    if results:
        print(f"\nReference: {reference_note(upstream)}")
    if args.json:
        with open(args.json, "w") as f:
            report = {"upstream": upstream, "train_step": results}
            if mask_results:
                report["stage2_mask_step"] = mask_results
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
