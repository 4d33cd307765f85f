"""One training epoch and one evaluation pass.

``train_one_epoch`` runs ``grad_accum_steps`` micro-batches per optimizer step (each loss scaled by
``1 / grad_accum_steps``), clips the gradient norm, steps the optimizer and the per-step lr
schedule, and updates the EMA. A non-finite loss stops training *before* the optimizer step with
a message naming the epoch and step, so no poisoned weights reach a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from rfdetr.datasets.collate import random_scale, resize_batch
from rfdetr.training.distributed import all_reduce_mean, is_main_process
from rfdetr.training.optim import base_lr
from rfdetr.training.progress import Progress

logger = logging.getLogger(__name__)


@dataclass
class StepSettings:
    """Everything a training epoch needs besides the model and the data."""

    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    grad_accum_steps: int = 1
    clip_max_norm: float = 0.1
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    ema: object | None = None  # ModelEMA
    scales: list[int] | None = None  # per-step batch resize sides (multi-scale); None: keep the size
    generator: torch.Generator = field(default_factory=torch.Generator)
    max_steps: int | None = None
    progress: str = "auto"  # rfdetr.training.progress modes


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before updating the weights."""


def move_targets(targets: Iterable[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _Meters:
    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        self.count += 1
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def means(self) -> dict[str, float]:
        return {key: value / max(1, self.count) for key, value in self.sums.items()}


def train_one_epoch(model: nn.Module, loader, settings: StepSettings, epoch: int) -> dict[str, float]:
    """Train for one pass over ``loader`` (or ``max_steps`` optimizer steps); returns mean losses."""
    model.train()
    settings.criterion.train()
    optimizer, accum = settings.optimizer, settings.grad_accum_steps
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    steps_in_loader = len(loader) // accum
    total = min(steps_in_loader, settings.max_steps) if settings.max_steps else steps_in_loader
    bar = Progress(settings.progress if is_main_process() else "none", total, f"epoch {epoch}")
    meters, step, micro, side = _Meters(), 0, 0, None
    optimizer.zero_grad(set_to_none=True)
    for samples, targets in loader:
        if step >= total:
            break
        samples = samples.to(settings.device)
        targets = move_targets(targets, settings.device)
        if settings.scales:
            if micro == 0:  # one scale per optimizer step
                side = random_scale(settings.scales, settings.generator)
            samples = resize_batch(samples, side)
        last_micro = micro + 1 == accum
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with settings.autocast():
                outputs = model(samples)
                _check_finite_predictions(outputs, epoch, step)
                losses = settings.criterion(outputs, targets, model=unwrap(model))
                loss = settings.criterion.weighted_loss(losses)
            if not torch.isfinite(loss):
                terms = {k: round(float(v.detach()), 4) for k, v in losses.items()
                         if k in settings.criterion.weight_dict}
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch}, step {step} (terms: {terms}); stopped before the "
                    "optimizer step, so the weights and checkpoints are untouched. Lower --lr, check the data "
                    "with validate_setup.py, or train without AMP (--no_amp).")
            scaled = loss / accum
            (settings.scaler.scale(scaled) if settings.scaler else scaled).backward()
        micro += 1
        if not last_micro:
            continue
        micro = 0
        grad_norm = _optimizer_step(parameters, settings)
        if settings.ema is not None:
            settings.ema.update(unwrap(model))
        step += 1
        values = {"loss": float(loss.detach()), "grad_norm": grad_norm, "lr": base_lr(optimizer)}
        values.update({k: float(v.detach()) for k, v in losses.items() if k in settings.criterion.weight_dict})
        meters.add(values)
        bar.update(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2e}")
    bar.close()
    optimizer.zero_grad(set_to_none=True)  # drop an incomplete accumulation at the end
    if step == 0:
        raise ValueError(f"epoch {epoch} had no complete optimizer step: the training split has {len(loader)} "
                         f"batches but one step needs {accum}; lower --accum or --batch")
    return all_reduce_mean(meters.means())


def _check_finite_predictions(outputs: dict, epoch: int, step: int) -> None:
    """Non-finite predictions stop the run as a non-finite loss would (the matcher could not even match them)."""
    bad = [key for key in ("pred_logits", "pred_boxes") if not torch.isfinite(outputs[key]).all()]
    if bad:
        raise NonFiniteLossError(
            f"loss is nan at epoch {epoch}, step {step}: the model's {' and '.join(bad)} are not finite; stopped "
            "before the optimizer step, so the weights and checkpoints are untouched. Lower --lr, check the data "
            "with validate_setup.py, or train without AMP (--no_amp).")


def _optimizer_step(parameters: list[torch.Tensor], settings: StepSettings) -> float:
    """Unscale (AMP), clip, step optimizer and schedule; returns the gradient norm before clipping."""
    if settings.scaler is not None:
        settings.scaler.unscale_(settings.optimizer)
    if settings.clip_max_norm > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, settings.clip_max_norm))
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None])))
    if settings.scaler is not None:
        settings.scaler.step(settings.optimizer)
        settings.scaler.update()
    else:
        settings.optimizer.step()
    settings.scheduler.step()
    settings.optimizer.zero_grad(set_to_none=True)
    return norm


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, criterion: nn.Module, postprocess: Callable, evaluator,
             class_rows: list[int], device: torch.device,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             progress: str = "auto", desc: str = "eval") -> dict:
    """Validation loss (one query group) and COCO metrics of ``evaluator`` (rank 0 gets them)."""
    model.eval()
    criterion.eval()
    meters = _Meters()
    bar = Progress(progress if is_main_process() else "none", len(loader), desc, unit="batch")
    for samples, targets in loader:
        samples = samples.to(device)
        targets = move_targets(targets, device)
        with autocast():
            outputs = model(samples)
            losses = criterion(outputs, targets, model=model)
        loss = criterion.weighted_loss(losses)
        meters.add({"loss": float(loss), **{k: float(v) for k, v in losses.items() if k in criterion.weight_dict}})
        outputs = {k: v.float() if torch.is_tensor(v) else v for k, v in outputs.items()
                   if k in ("pred_logits", "pred_boxes", "pred_masks", "mask_context")}
        sizes = torch.stack([t["orig_size"] for t in targets])
        results = postprocess(outputs, sizes, class_rows=class_rows)
        evaluator.update([int(t["image_id"]) for t in targets], results)
        bar.update()
    bar.close()
    return {"losses": all_reduce_mean(meters.means()), "metrics": evaluator.summarize()}
