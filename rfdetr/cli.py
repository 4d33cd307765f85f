"""Shared pieces of the training scripts' command lines (imports nothing heavy: ``--help`` stays fast).

Flags default to ``None`` and only the flags a user gave are passed on, so every default lives in
:class:`rfdetr.config.TrainConfig` (or the size presets) and nowhere else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

SIZE_CHOICES = ("nano", "small", "medium", "base", "large")
# flag -> TrainConfig field, for flags whose names differ from the field
FLAG_TO_FIELD = {"batch": "batch_size", "accum": "grad_accum_steps", "workers": "num_workers",
                 "patience": "early_stopping_patience"}
TRAIN_FLAGS = ("epochs", "batch", "accum", "workers", "resolution", "lr", "lr_encoder", "weight_decay",
               "multi_scale", "expanded_scales", "device", "early_stopping", "patience", "tensorboard", "wandb",
               "seed", "dataset_dir", "output_dir", "warmup_epochs", "lr_scheduler", "run_test")


def str2bool(value: str | bool) -> bool:
    """``0/1/true/false/yes/no`` (any case) -> bool; a bare flag means True."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (0/1/true/false), got {value!r}")


def add_bool(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    parser.add_argument(flag, type=str2bool, nargs="?", const=True, default=None, metavar="0|1", help=help_text)


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every training script shares (defaults: TrainConfig's, shown in the help text)."""
    parser.add_argument("--size", choices=SIZE_CHOICES, default="small", help="model size (default: small)")
    parser.add_argument("--dataset_dir", default=None, help="COCO folder with train/ valid/ [test/] (default: dataset)")
    parser.add_argument("--output_dir", default=None, help="run folder (default: runs/<kind>_<size>_<resolution>_<n>)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: 100)")
    parser.add_argument("--batch", type=int, default=None, help="images per micro-batch (default: 4)")
    parser.add_argument("--accum", type=int, default=None, help="micro-batches per optimizer step (default: 4)")
    parser.add_argument("--workers", type=int, default=None, help="data-loader worker processes (default: 2)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="square training side, a multiple of patch x windows (default: the size's native one)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-4)")
    parser.add_argument("--lr_encoder", type=float, default=None, help="ViT learning rate (default: 1.5e-4)")
    parser.add_argument("--weight_decay", type=float, default=None, help="AdamW weight decay (default: 1e-4)")
    parser.add_argument("--warmup_epochs", type=float, default=None, help="linear warm-up epochs (default: 0)")
    parser.add_argument("--lr_scheduler", choices=("cosine", "step"), default=None, help="(default: cosine)")
    parser.add_argument("--no_amp", action="store_true", help="train in fp32 on CUDA too (CPU always uses fp32)")
    add_bool(parser, "--multi_scale", "random square scales per step (default: 1)")
    add_bool(parser, "--expanded_scales", "wider range of scales (default: 1)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: cuda if available)")
    parser.add_argument("--resume", default=None, help="checkpoint.pth (or its run folder) to continue exactly")
    add_bool(parser, "--early_stopping", "stop when validation AP stops improving (default: 0)")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs (default: 10)")
    add_bool(parser, "--tensorboard", "write TensorBoard scalars to the run folder (default: 1)")
    parser.add_argument("--wandb", action="store_true", default=None, help="log to Weights & Biases (offline-safe)")
    add_bool(parser, "--run_test", "evaluate the best weights on test/ at the end if it exists (default: 1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: 42)")
    parser.add_argument("--pretrain_exclude_keys", nargs="*", default=None, metavar="PATTERN",
                        help="fnmatch patterns (space or comma separated) of checkpoint keys not to load")
    model = parser.add_argument_group("smaller/faster models (defaults: the size's native values)")
    model.add_argument("--num_queries", type=int, default=None, help="object queries (native: 300)")
    model.add_argument("--group_detr", type=int, default=None, help="query groups in training (native: 13)")
    model.add_argument("--gradient_checkpointing", type=str2bool, nargs="?", const=True, default=None, metavar="0|1",
                       help="recompute ViT blocks in backward: less training memory, slower steps (default: 1)")


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """ModelConfig fields for the model flags the user gave."""
    names = ("num_queries", "group_detr", "gradient_checkpointing")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields for the flags the user actually gave."""
    overrides = {FLAG_TO_FIELD.get(flag, flag): getattr(args, flag) for flag in TRAIN_FLAGS
                 if getattr(args, flag, None) is not None}
    if getattr(args, "no_amp", False):
        overrides["amp"] = False
    return overrides


def split_patterns(values: list[str] | None) -> list[str]:
    return [part for value in values or [] for part in value.split(",") if part]


def next_run_dir(base: str) -> Path:
    """``runs/<base>_<n>`` with the first ``n >= 1`` that does not exist yet."""
    n = 1
    while (Path("runs") / f"{base}_{n}").exists():
        n += 1
    return Path("runs") / f"{base}_{n}"


def resume_paths(resume: str | None) -> tuple[Path | None, Path | None]:
    """(checkpoint file, its run folder) for ``--resume FILE_OR_FOLDER``; errors name what is missing."""
    if resume is None:
        return None, None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoint.pth"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: {path} does not exist")
    return path, path.parent


def banner(title: str, rows: dict[str, Any]) -> str:
    width = max(len(k) for k in rows) + 2
    lines = ["=" * 72, title, "=" * 72] + [f"{k + ':':<{width}} {v}" for k, v in rows.items()] + ["=" * 72]
    return "\n".join(lines)


def run_training(train: Callable[[], Any], metric: str) -> int:
    """A script's exit code for ``train()`` (which returns a ``TrainResult``): 0 when it finished,
    2 for bad input (the message says what to fix), 1 when the loss stopped being finite."""
    from rfdetr.checkpoint import CheckpointError
    from rfdetr.training.distributed import is_main_process
    from rfdetr.training.engine import NonFiniteLossError
    from rfdetr.weights import WeightsDownloadError

    try:
        result = train()
    except (FileNotFoundError, ValueError, CheckpointError, WeightsDownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if is_main_process():
        print(f"done: best {metric} AP {result.best_metric:.4f} at epoch {result.best_epoch}; "
              f"weights in {result.output_dir}/checkpoint_best_total.pth")
    return 0
