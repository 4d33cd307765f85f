"""The training run: data, optimisation, per-epoch evaluation, checkpoints, logs, early stopping, resume.

Files in ``output_dir`` (rank 0 writes them, each atomically):

- ``checkpoint.pth``: everything needed to resume (model, optimizer, scheduler, scaler, EMA,
  epoch, best metrics, early-stopping state), rewritten every epoch;
  ``checkpoint<epoch:04>.pth`` every ``checkpoint_interval`` epochs;
- ``checkpoint_best_regular.pth`` / ``checkpoint_best_ema.pth``: the best weights by the selection
  metric (bbox AP, or segm AP when masks are trained); ``checkpoint_best_total.pth``: the better of
  the two, weights only, written at the end;
- ``log.txt`` (a JSON line per epoch), ``results.json`` (metrics of the *best* epoch),
  TensorBoard events in ``tb/``.

Every checkpoint stores the run's :class:`~rfdetr.config.RunConfig` (``"run"``), so a run folder
alone says how to continue it. Randomness is re-seeded from ``(seed, epoch, rank)`` at every epoch
start and ``checkpoint.pth`` is written after the epoch's history and early-stopping update, which
is what makes ``--resume`` continue exactly as an uninterrupted run would.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from rfdetr.accel import accelerate
from rfdetr.checkpoints.durable import remove_stale_temporaries, save_checkpoint
from rfdetr.checkpoints.files import make_checkpoint, read_checkpoint
from rfdetr.classes import ClassTable
from rfdetr.config import COCO_MAX_DETECTIONS, SIZE_PRESETS, RunConfig
from rfdetr.datasets import build_dataset, collate_fn
from rfdetr.datasets.splits import has_split
from rfdetr.datasets.transforms import train_scales
from rfdetr.models import PostProcess, build_criterion
from rfdetr.training import distributed as dist
from rfdetr.training.early_stopping import EarlyStopping
from rfdetr.training.ema import ModelEMA
from rfdetr.training.engine import NonFiniteLossError, StepSettings, evaluate, train_one_epoch, unwrap
from rfdetr.training.optim import build_optimizer, build_scheduler
from rfdetr.training.pictures import write_end_of_run_pictures
from rfdetr.training.plots import write_results_plot
from rfdetr.training.progress import epoch_summary, resolve_mode
from rfdetr.training.reporting import RunReporter, flatten_result, metric_scalars
from rfdetr.util.device import resolve_device
from rfdetr.util.precision import autocast_for

logger = logging.getLogger(__name__)

# Loss terms (last decoder layer) that get a TensorBoard tag of their own, besides the weighted total.
LOGGED_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")


@dataclass
class TrainResult:
    output_dir: Path
    best_epoch: int | None
    best_metric: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    best_weights: dict | None = None  # the state dict of checkpoint_best_total.pth (None: no epoch finished)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains ``model`` (a detector, or a detector with a mask head) as ``run`` describes."""

    def __init__(self, model: nn.Module, run: RunConfig, classes: ClassTable, *, criterion: nn.Module | None = None):
        """model: the detector (stage ``"detector"``) or a ``DETRsegm`` (``"masks"``, ``"joint"``: target masks
        are loaded and ``segm`` is evaluated and picks the best checkpoint); criterion: default the detection
        criterion of the run (mask runs pass theirs, see :mod:`rfdetr.training.stages`)."""
        config = run.train
        self.config = config
        self.masks = run.mask is not None
        self.select_on = "segm" if self.masks else "bbox"
        self.classes = classes
        self.device = resolve_device(config.device)
        self.autocast, self.scaler = autocast_for(self.device, config.precision, config.amp)
        self.progress = resolve_mode(config.progress)
        self.distributed = dist.init_distributed(self.device)
        self.output_dir = Path(config.output_dir)
        self.resolution = config.resolution or run.model.resolution
        if self.resolution % run.model.block_size:
            raise ValueError(f"resolution {self.resolution} must be a multiple of {run.model.block_size} "
                             f"(patch_size x num_windows) for {run.model.size}")
        # Checkpoints record the resolution the model was trained at: predict() and export use it.
        model_config = run.model.model_copy(update={"resolution": self.resolution})
        self.model_config = model_config
        self.run = run.model_copy(update={"model": model_config})
        seed_everything(config.seed + dist.rank())
        self.datasets = self._build_datasets()
        self.model = accelerate(model.to(self.device), self.device, config.precision)  # the CPU speed paths
        self.criterion = criterion or build_criterion(model_config, config)
        self.criterion.to(self.device)
        self.ema = ModelEMA(model, config.ema_decay, config.ema_tau) if config.use_ema else None
        if self.distributed:
            self.model = nn.parallel.DistributedDataParallel(self.model)
        self.loader, self.sampler = self._train_loader()
        steps = len(self.loader) // config.grad_accum_steps
        self.steps_per_epoch = max(1, min(steps, config.max_steps_per_epoch or steps))
        self.optimizer = build_optimizer(unwrap(self.model).named_parameters(), model_config, config)
        self.scheduler = build_scheduler(self.optimizer, self.steps_per_epoch, config)
        self.postprocess = PostProcess(model_config.num_select)
        self.stopper = EarlyStopping(config.early_stopping_patience, config.early_stopping_min_delta)
        self.best = {"regular": -1.0, "ema": -1.0}
        self.best_epoch: dict[str, int | None] = {"regular": None, "ema": None}
        self.best_record: dict[str, dict] = {}
        self.history: list[dict] = []
        self.start_epoch = 0
        if config.resume:
            self._resume(config.resume)

    # ---- data -------------------------------------------------------------------------------------
    def _build_datasets(self) -> dict:
        common = dict(resolution=self.resolution, masks=self.masks)
        splits = {
            "train": build_dataset(self.config.dataset_dir, "train", train=True, multi_scale=self.config.multi_scale,
                                   expanded_scales=self.config.expanded_scales,
                                   do_random_resize_via_padding=self.config.do_random_resize_via_padding,
                                   patch_size=self.model_config.patch_size, num_windows=self.model_config.num_windows,
                                   native_resolution=self._native_resolution(), **common),
            "valid": build_dataset(self.config.dataset_dir, "valid", train=False, **common),
        }
        if self.config.run_test and has_split(self.config.dataset_dir, "test"):
            splits["test"] = build_dataset(self.config.dataset_dir, "test", train=False, **common)
        for name, dataset in splits.items():
            if dataset.classes != self.classes:
                raise ValueError(
                    f"the {name} split of {self.config.dataset_dir} has classes {dataset.classes.describe()} but "
                    f"the model has {self.classes.describe()}; build the model with the dataset's classes "
                    "(RFDETR.train and train_detector_stage1.py do this) or fix the split's categories")
        return splits

    def _train_loader(self):
        dataset, config = self.datasets["train"], self.config
        effective = config.batch_size * config.grad_accum_steps * dist.world_size()
        if self.distributed:
            sampler = DistributedSampler(dataset, shuffle=True, seed=config.seed, drop_last=True)
        elif len(dataset) < effective * 5:  # tiny datasets: five optimizer steps per epoch, with replacement
            sampler = RandomSampler(dataset, replacement=True, num_samples=effective * 5)
        else:
            sampler = RandomSampler(dataset)
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                            collate_fn=collate_fn, num_workers=config.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        return loader, sampler

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self.datasets[split]
        sampler = DistributedSampler(dataset, shuffle=False) if self.distributed else None
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler, shuffle=False,
                          collate_fn=collate_fn, num_workers=self.config.num_workers)

    def _batch_scales(self) -> list[int] | None:
        """Per-step resize sides for multi-scale training (the dataset then delivers the largest side)."""
        if not self.config.multi_scale or self.config.do_random_resize_via_padding:
            return None
        return train_scales(self.resolution, self.model_config.patch_size, self.model_config.num_windows,
                            multi_scale=True, expanded_scales=self.config.expanded_scales,
                            do_random_resize_via_padding=True, native_resolution=self._native_resolution())

    def _native_resolution(self) -> int | None:
        """The resolution the multi-scale set is scaled from: the size's native one (``relative_scales``)."""
        return SIZE_PRESETS[self.model_config.size]["resolution"] if self.config.relative_scales else None

    # ---- the run ------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        config = self.config
        main = dist.is_main_process()
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_temporaries(self.output_dir):
                logger.warning("removed %s: a process killed while writing a checkpoint left it", stale)
            (self.output_dir / "train_config.json").write_text(json.dumps(config.model_dump(), indent=2))
            (self.output_dir / "run_config.json").write_text(json.dumps(self.run.model_dump(), indent=2))
        reporter = RunReporter(self.output_dir, tensorboard=config.tensorboard, wandb=config.wandb, enabled=main,
                               project=config.project, run=config.run, config=config.model_dump())
        if self.start_epoch > 0:
            reporter.restart_log(self.history)
        try:
            stopped_early = self._train_epochs(reporter)
            best_weights = self._finish()
        finally:
            reporter.close()
        kind = max(self.best, key=self.best.get)
        return TrainResult(self.output_dir, self.best_epoch[kind], self.best[kind], self.history, stopped_early,
                           best_weights)

    def _train_epochs(self, reporter: RunReporter) -> bool:
        """Epochs from ``start_epoch`` to the end, or until early stopping (then ``True``)."""
        config = self.config
        main = dist.is_main_process()
        for epoch in range(self.start_epoch, config.epochs):
            started = time.monotonic()
            record, scalars = self._run_epoch_naming_the_last_checkpoint(epoch)
            reporter.log_epoch(record, scalars, epoch)
            if main and self.progress != "none":
                logger.info("%s", epoch_summary(record, config.epochs, time.monotonic() - started, self.select_on))
            if main and config.plots:
                self._draw(write_results_plot, self.history, self.output_dir / "results.png")
            stop = dist.broadcast_object(self.stopper.should_stop) if config.early_stopping else False
            if stop:
                logger.info("early stopping after epoch %d: no improvement > %g for %d epochs", epoch,
                            config.early_stopping_min_delta, config.early_stopping_patience)
                return True
        return False

    def _run_epoch_naming_the_last_checkpoint(self, epoch: int) -> tuple[dict, dict]:
        try:
            return self._run_epoch(epoch)
        except NonFiniteLossError as error:
            last = self.output_dir / "checkpoint.pth"
            where = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
            raise NonFiniteLossError(f"{error} ({where})") from None

    def _run_epoch(self, epoch: int) -> tuple[dict, dict]:
        config = self.config
        seed_everything(config.seed + 1000 * epoch + dist.rank())
        generator = torch.Generator().manual_seed(config.seed + epoch)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        settings = StepSettings(
            criterion=self.criterion, optimizer=self.optimizer, scheduler=self.scheduler, device=self.device,
            grad_accum_steps=config.grad_accum_steps, clip_max_norm=config.clip_max_norm, autocast=self.autocast,
            scaler=self.scaler, ema=self.ema, scales=self._batch_scales(), generator=generator,
            max_steps=self.steps_per_epoch, progress=self.progress)
        train_stats = train_one_epoch(self.model, self.loader, settings, epoch)
        valid = self._evaluate(unwrap(self.model), "valid")
        ema_valid = self._evaluate(self.ema.module, "valid", "valid ema") if self.ema is not None else None
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()},
                  **flatten_result("valid", valid)}
        if ema_valid is not None:
            record.update(flatten_result("ema_valid", ema_valid))
        scores = {"regular": self._selection_metric(valid)}
        if ema_valid is not None:
            scores["ema"] = self._selection_metric(ema_valid)
        improved = self._track_best(epoch, scores, {"regular": valid, "ema": ema_valid})  # same on every rank
        monitored = scores["ema"] if config.early_stopping_use_ema and "ema" in scores else max(scores.values())
        self.stopper.update(monitored)
        record.update({"selection_metric": f"{self.select_on}_AP", "best_regular": self.best["regular"],
                       "best_ema": self.best["ema"]})
        # The checkpoint holds this epoch's history and early-stopping state: a resumed run counts it.
        self.history.append(record)
        if dist.is_main_process():
            self._write_checkpoints(epoch, improved, {"regular": valid, "ema": ema_valid})
        scalars = {"train/loss": train_stats["loss"], "train/lr": train_stats["lr"],
                   "val/loss": valid["losses"].get("loss", float("nan")), **metric_scalars("val", valid["metrics"]),
                   **{f"train/{k}": v for k, v in train_stats.items() if k in LOGGED_TERMS},
                   **{f"val/{k}": v for k, v in valid["losses"].items() if k in LOGGED_TERMS}}
        if ema_valid is not None:
            scalars.update(metric_scalars("val_ema", ema_valid["metrics"]))
        return record, scalars

    def _evaluate(self, model: nn.Module, split: str, desc: str | None = None) -> dict:
        from rfdetr.evaluation import CocoEvaluator

        dataset = self.datasets[split]
        iou_types = ("bbox", "segm") if self.masks else ("bbox",)
        evaluator = CocoEvaluator(dataset.coco, self.classes, iou_types)
        return evaluate(model, self._eval_loader(split), criterion=self.criterion, postprocess=self._postprocess(model),
                        evaluator=evaluator, class_rows=self.classes.class_rows, device=self.device,
                        autocast=self.autocast, progress=self.progress, desc=desc or split)

    @staticmethod
    def _draw(write, *arguments) -> None:
        """Pictures are for people: a failure to draw one is a warning, never the end of a run."""
        try:
            write(*arguments)
        except (OSError, ValueError, RuntimeError, ImportError) as error:
            logger.warning("could not draw %s: %s", write.__name__, error)

    def _postprocess(self, model: nn.Module) -> Callable:
        """Post-processing of ``model``'s outputs: masks come from ``model``'s own head (regular or EMA)."""
        if not self.masks:
            return self.postprocess
        if self.model_config.segmentation_head:  # masks of every query come with the outputs
            from rfdetr.models.dense_mask_postprocess import PostProcessDenseMasks

            return PostProcessDenseMasks(self.model_config.num_select)
        from rfdetr.models.mask_postprocess import PostProcessMasks

        return functools.partial(PostProcessMasks(self.model_config.num_select, COCO_MAX_DETECTIONS), model=model)

    def _selection_metric(self, result: dict) -> float:
        metrics = result["metrics"] or {}
        return float((metrics.get(self.select_on) or {}).get("ap") or 0.0)

    # ---- checkpoints ----------------------------------------------------------------------------------
    def _checkpoint(self, weights: nn.Module, epoch: int, *, full: bool, **extra) -> dict:
        content = make_checkpoint(weights, self.model_config, self.classes, epoch=epoch, run=self.run.model_dump(),
                                  train_config=self.config.model_dump(), **self._mask_entry(), **extra)
        if full:
            content.update(optimizer=self.optimizer.state_dict(), lr_scheduler=self.scheduler.state_dict(),
                           scaler=self.scaler.state_dict() if self.scaler else None,
                           ema=self.ema.state_dict() if self.ema else None,
                           trainer={"best": self.best, "best_epoch": self.best_epoch, "history": self.history,
                                    "best_record": self.best_record, "early_stopping": self.stopper.state_dict()})
        return content

    def _mask_entry(self) -> dict:
        """``{"masks": MaskConfig fields}`` for a mask run: what loaders read to rebuild the mask head."""
        return {"masks": self.run.mask.model_dump()} if self.run.mask is not None else {}

    def _track_best(self, epoch: int, scores: dict[str, float], results: dict[str, dict | None]) -> dict[str, bool]:
        improved = {kind: score > self.best[kind] for kind, score in scores.items()}
        for kind, better in improved.items():
            if better:
                self.best[kind], self.best_epoch[kind] = scores[kind], epoch
                self.best_record[kind] = {"epoch": epoch, "valid": results[kind]["metrics"]}
        return improved

    def _write_checkpoints(self, epoch: int, improved: dict[str, bool], results: dict[str, dict | None]) -> None:
        """The epoch's files; ``checkpoint.pth``, the resume point, last: whatever it refers to exists."""
        model = unwrap(self.model)
        if improved.get("regular"):
            save_checkpoint(self._checkpoint(model, epoch, full=False, metrics=results["regular"]["metrics"]),
                            self.output_dir / "checkpoint_best_regular.pth")
        if improved.get("ema"):
            save_checkpoint(self._checkpoint(self.ema.module, epoch, full=False, metrics=results["ema"]["metrics"]),
                            self.output_dir / "checkpoint_best_ema.pth")
        if (epoch + 1) % self.config.checkpoint_interval == 0:
            save_checkpoint(self._checkpoint(model, epoch, full=True), self.output_dir / f"checkpoint{epoch:04}.pth")
        save_checkpoint(self._checkpoint(model, epoch, full=True), self.output_dir / "checkpoint.pth")

    def _resume(self, path: str) -> None:
        checkpoint = read_checkpoint(path)
        if "optimizer" not in checkpoint or "trainer" not in checkpoint:
            raise ValueError(f"{path} is not a resumable checkpoint (no optimizer/trainer state); resume from "
                             "the run's checkpoint.pth, or pass it as --pretrain_weights to start a new run")
        unwrap(self.model).load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None and checkpoint.get("ema"):
            self.ema.load_state_dict(checkpoint["ema"])
        state = checkpoint["trainer"]
        self.best, self.best_epoch = dict(state["best"]), dict(state["best_epoch"])
        self.history, self.best_record = list(state["history"]), dict(state["best_record"])
        self.stopper.load_state_dict(state["early_stopping"])
        self.start_epoch = int(checkpoint["epoch"]) + 1
        logger.info("resumed from %s at epoch %d", path, self.start_epoch)

    def _finish(self) -> dict | None:
        """checkpoint_best_total.pth, the test split on it, and results.json of the best epoch; returns
        the best weights (``None`` when no epoch finished)."""
        from rfdetr.evaluation import results_json

        dist.barrier()
        kind = "ema" if self.best["ema"] > self.best["regular"] else "regular"
        source = self.output_dir / f"checkpoint_best_{kind}.pth"
        if self.best_epoch[kind] is None:
            return None
        best = dist.broadcast_object(read_checkpoint(source) if dist.is_main_process() else None)
        kept = ("model", "config", "classes", "rfdetr_version", "epoch", "metrics", "run", "masks")
        total = {k: best[k] for k in kept if k in best}
        test = None
        if "test" in self.datasets:
            unwrap(self.model).load_state_dict(best["model"])
            test = self._evaluate(unwrap(self.model), "test")
            total["test_metrics"] = test["metrics"]
        if dist.is_main_process():
            save_checkpoint(total, self.output_dir / "checkpoint_best_total.pth")
            if self.config.plots:
                unwrap(self.model).load_state_dict(best["model"])
                self._draw(write_end_of_run_pictures, unwrap(self.model), self.datasets["valid"], self.classes,
                           self._postprocess(unwrap(self.model)), self.device, self.autocast, self.output_dir)
            summary = results_json(self.best_record[kind]["valid"], test["metrics"] if test else None,
                                   epoch=self.best_epoch[kind])
            summary.update(best_weights=kind, selection_metric=f"{self.select_on}_AP")
            (self.output_dir / "results.json").write_text(json.dumps(summary, indent=2))
        return best["model"]
