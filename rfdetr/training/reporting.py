"""Run records: ``log.txt`` (one JSON line per epoch), TensorBoard scalars in ``tb/``, optional W&B.

A handful of well-named tags, not one per parameter group:
``train/loss``, ``train/lr``, ``val/loss``, ``val/bbox_AP``, ``val/bbox_AP50``, ``val/bbox_AR100``
(``val/segm_*`` when masks are evaluated) and ``val_ema/*`` for the EMA weights.
Only rank 0 writes; W&B runs offline unless the user configured it (``WANDB_MODE``, an API key).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def metric_scalars(prefix: str, metrics: dict) -> dict[str, float]:
    """``{prefix/bbox_AP: ..., ...}`` from evaluator output ``{"bbox": {...}, "segm": {...}}``."""
    scalars = {}
    for iou_type, values in metrics.items():
        if not isinstance(values, dict):
            continue
        for name, key in (("AP", "ap"), ("AP50", "ap50"), ("AR100", "ar100")):
            if values.get(key) is not None:
                scalars[f"{prefix}/{iou_type}_{name}"] = float(values[key])
    return scalars


class RunReporter:
    """Writes what each epoch measured to the run folder and the configured dashboards."""

    def __init__(self, output_dir: str | os.PathLike, *, tensorboard: bool, wandb: bool, enabled: bool,
                 project: str | None = None, run: str | None = None, config: dict | None = None):
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.writer = None
        self.wandb_run = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.output_dir / "tb"))
        if wandb:
            self.wandb_run = _start_wandb(self.output_dir, project, run, config or {})

    def restart_log(self, records: list[dict[str, Any]]) -> None:
        """Rewrite ``log.txt`` as the resumed checkpoint's history: lines of epochs it did not keep
        (a run stopped between its log line and its checkpoint) go, lines it kept but the log lost come back."""
        if not self.enabled:
            return
        temporary = self.output_dir / "log.txt.tmp"
        temporary.write_text("".join(json.dumps(record, default=_plain) + "\n" for record in records))
        os.replace(temporary, self.output_dir / "log.txt")

    def log_epoch(self, record: dict[str, Any], scalars: dict[str, float], epoch: int) -> None:
        if not self.enabled:
            return
        with open(self.output_dir / "log.txt", "a") as file:
            file.write(json.dumps(record, default=_plain) + "\n")
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, epoch)
            self.writer.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({**scalars, "epoch": epoch})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _start_wandb(output_dir: Path, project: str | None, run: str | None, config: dict):
    try:
        import wandb
    except ImportError:
        logger.warning("--wandb given but wandb is not installed (pip install wandb); continuing without it")
        return None
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    try:
        return wandb.init(project=project or "rt-detr-seg", name=run, config=config, dir=str(output_dir), mode=mode)
    except Exception as error:  # noqa: BLE001 - W&B raises many types (network, auth); never fatal
        logger.warning("W&B could not start (%s); continuing without it", error)
        return None


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars and paths."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def flatten_result(prefix: str, result: dict) -> dict:
    """An evaluation result as run-log fields: ``{prefix}_{loss}``, ``{prefix}_{iou}_AP``, ``_AP50``, ``_stats``."""
    flat = {f"{prefix}_{k}": v for k, v in result["losses"].items()}
    for iou_type, values in (result["metrics"] or {}).items():
        if isinstance(values, dict):
            flat[f"{prefix}_{iou_type}_stats"] = values.get("stats")
            flat[f"{prefix}_{iou_type}_AP"] = values.get("ap")
            flat[f"{prefix}_{iou_type}_AP50"] = values.get("ap50")
    return flat
