"""Shared pieces of the training scripts' command lines (imports no torch: ``--help`` stays fast).

Flags default to ``None`` and only the flags a user gave are passed on, so every default lives in
:class:`rfdetr.config.TrainConfig` / :class:`~rfdetr.config.MaskConfig` (or the size presets) and
nowhere else; the help texts read their defaults from those fields.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from rfdetr.config import DEFAULT_SCRIPT_SIZE, PRECISIONS, SEG_SIZES, SIZES, MaskConfig, ModelConfig, TrainConfig

# flag -> TrainConfig field, for flags whose names differ from the field
FLAG_TO_FIELD = {"batch": "batch_size", "accum": "grad_accum_steps", "workers": "num_workers",
                 "patience": "early_stopping_patience"}
TRAIN_FLAGS = ("epochs", "batch", "accum", "workers", "resolution", "lr", "lr_encoder", "weight_decay",
               "multi_scale", "expanded_scales", "relative_scales", "device", "early_stopping", "patience",
               "tensorboard", "wandb", "seed", "dataset_dir", "output_dir", "warmup_epochs", "lr_scheduler",
               "run_test", "use_ema", "precision", "progress")
MODEL_FLAGS = ("num_queries", "group_detr", "gradient_checkpointing")


def default(field: str, config: str = "train") -> Any:
    """The default of a field of :class:`~rfdetr.config.TrainConfig` (``"train"``), ModelConfig (``"model"``)
    or MaskConfig (``"mask"``)."""
    value = {"train": TrainConfig, "model": ModelConfig, "mask": MaskConfig}[config].model_fields[field].default
    return int(value) if isinstance(value, bool) else value


def described(text: str, field: str, config: str = "train") -> str:
    """``text`` with the field's default appended (help texts never repeat a default by hand)."""
    return f"{text} (default: {default(field, config)})"


def command_doc(doc: str, prog: str | None, script: str) -> str:
    """``doc`` with its examples' ``{prog}`` written as the command that runs: ``prog`` (the ``rfdetr``
    command passes ``rfdetr SUB-COMMAND``), else ``python SCRIPT`` (the root script)."""
    return doc.replace("{prog}", prog or f"python {script}")


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


def add_training_flags(parser: argparse.ArgumentParser, size_help: str | None = None) -> None:
    """The flags every training script shares (help texts show TrainConfig's defaults)."""
    parser.add_argument("--size", choices=SIZES + SEG_SIZES, default=None,
                        help=size_help or f"model size (default: {DEFAULT_SCRIPT_SIZE['detector']})")
    parser.add_argument("--dataset_dir", default=None,
                        help=described("COCO folder with train/ valid/ [test/], or a YOLO folder with data.yaml",
                                       "dataset_dir"))
    parser.add_argument("--output_dir", default=None, help="run folder (default: runs/<kind>_<size>_<resolution>_<n>)")
    parser.add_argument("--epochs", type=int, default=None, help=described("epochs", "epochs"))
    parser.add_argument("--batch", type=int, default=None, help=described("images per micro-batch", "batch_size"))
    parser.add_argument("--accum", type=int, default=None,
                        help=described("micro-batches per optimizer step", "grad_accum_steps"))
    parser.add_argument("--workers", type=int, default=None,
                        help=described("data-loader worker processes", "num_workers"))
    parser.add_argument("--resolution", type=int, default=None,
                        help="square training side, a multiple of patch x windows (default: the size's native one)")
    parser.add_argument("--lr", type=float, default=None, help=described("learning rate", "lr"))
    parser.add_argument("--lr_encoder", type=float, default=None, help=described("ViT learning rate", "lr_encoder"))
    parser.add_argument("--weight_decay", type=float, default=None,
                        help=described("AdamW weight decay", "weight_decay"))
    parser.add_argument("--warmup_epochs", type=float, default=None,
                        help=described("linear warm-up epochs", "warmup_epochs"))
    parser.add_argument("--lr_scheduler", choices=("cosine", "step"), default=None,
                        help=described("learning-rate schedule", "lr_scheduler"))
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help=described("compute precision: auto = mixed on CUDA, fp32 elsewhere; bf16 also on CPUs "
                                       "with AVX-512 BF16 or AMX", "precision"))
    parser.add_argument("--progress", choices=("auto", "bar", "line", "none"), default=None,
                        help=described("progress output: a bar on a terminal, else a line per epoch (and every "
                                       "~30 s in long epochs)", "progress"))
    parser.add_argument("--no_amp", action="store_true", help="train in fp32 on CUDA too (same as --precision fp32)")
    add_bool(parser, "--multi_scale", described("random square scales per step", "multi_scale"))
    add_bool(parser, "--expanded_scales", described("wider range of scales", "expanded_scales"))
    add_bool(parser, "--relative_scales", described("scales follow the training resolution (0: upstream's sides "
                                                    "around it, down to 2 blocks)", "relative_scales"))
    add_bool(parser, "--use_ema", described("keep an EMA of the weights and evaluate it too", "use_ema"))
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: cuda if available)")
    parser.add_argument("--resume", default=None,
                        help="a run folder (or its checkpoint.pth) to continue exactly: size, model and settings "
                             "come from it; flags given with it override the stored settings")
    add_bool(parser, "--early_stopping", described("stop when the validation AP that selects checkpoints stops "
                                                   "improving", "early_stopping"))
    parser.add_argument("--patience", type=int, default=None,
                        help=described("early-stopping patience in epochs", "early_stopping_patience"))
    add_bool(parser, "--tensorboard", described("write TensorBoard scalars to RUN_DIR/tb", "tensorboard"))
    parser.add_argument("--wandb", action="store_true", default=None, help="log to Weights & Biases (offline-safe)")
    add_bool(parser, "--run_test", described("evaluate the best weights on test/ at the end if it exists",
                                             "run_test"))
    parser.add_argument("--seed", type=int, default=None, help=described("random seed", "seed"))
    parser.add_argument("--pretrain_exclude_keys", nargs="*", default=None, metavar="PATTERN",
                        help="fnmatch patterns (space or comma separated) of checkpoint keys not to load")
    model = parser.add_argument_group("smaller/faster models (defaults: the size's native values)")
    model.add_argument("--num_queries", type=int, default=None, help=described("object queries", "num_queries",
                                                                                  "model"))
    model.add_argument("--group_detr", type=int, default=None,
                       help=described("query groups in training", "group_detr", "model"))
    model.add_argument("--gradient_checkpointing", type=str2bool, nargs="?", const=True, default=None, metavar="0|1",
                       help=described("recompute ViT blocks in backward: less training memory, slower steps",
                                      "gradient_checkpointing", "model"))


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """ModelConfig fields for the model flags the user gave."""
    return {name: getattr(args, name) for name in MODEL_FLAGS if getattr(args, name, None) is not None}


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields for the flags the user actually gave."""
    overrides = {FLAG_TO_FIELD.get(flag, flag): getattr(args, flag) for flag in TRAIN_FLAGS
                 if getattr(args, flag, None) is not None}
    if getattr(args, "no_amp", False):
        overrides["amp"] = False
    return overrides


def split_patterns(values: list[str] | None) -> list[str]:
    return [part for value in values or [] for part in value.split(",") if part]


def resume_checkpoint(resume: str | None) -> Path | None:
    """The checkpoint file of ``--resume RUN_DIR_OR_FILE``; errors name what is missing."""
    if resume is None:
        return None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoint.pth"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: {path} does not exist (a run folder holds checkpoint.pth)")
    return path


def refuse_on_resume(args: argparse.Namespace, flags: tuple[str, ...]) -> None:
    """Flags that decide the model cannot change when a run continues."""
    given = [f"--{flag}" for flag in flags if getattr(args, flag, None) not in (None, [])]
    if given:
        raise ValueError(f"{', '.join(given)} cannot change on --resume: the model is the run's (stored in its "
                         "checkpoint); start a new run to change it")


def overrides_lines(changed: dict[str, tuple[Any, Any]]) -> list[str]:
    """One line per stored setting that an explicit flag changed on resume."""
    return [f"resume: {field} {old!r} -> {new!r} (given on the command line)" for field, (old, new) in changed.items()]


def banner(title: str, rows: dict[str, Any]) -> str:
    width = max(len(k) for k in rows) + 2
    lines = ["=" * 72, title, "=" * 72] + [f"{k + ':':<{width}} {v}" for k, v in rows.items()] + ["=" * 72]
    return "\n".join(lines)


class RunInterrupted(Exception):
    """A run stopped from outside (Ctrl-C, SIGTERM, another process of a torchrun run died); the message is
    the command that continues it, ``reason`` says what stopped it and ``exit_code`` is the script's."""

    def __init__(self, command: str, reason: str = "SIGINT", exit_code: int = 130):
        super().__init__(command)
        self.reason, self.exit_code = reason, exit_code


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (what torchrun sends the other ranks when one dies)."""


@contextlib.contextmanager
def raise_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only), so that a stopped run says
    how to continue; the previous handler is restored afterwards."""
    import signal
    import threading

    def terminate(signum, frame):
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_training(train: Callable[[], Any], metric: str) -> int:
    """A script's exit code for ``train()`` (which returns a ``TrainResult``): 0 when it finished,
    2 for bad input (the message says what to fix), 1 when the loss stopped being finite or the
    disk is full or another process of a torchrun run died, 130 on Ctrl-C and 143 on SIGTERM (one line
    says how to resume; the last checkpoint is intact)."""
    import errno

    from rfdetr.checkpoints.download import WeightsDownloadError
    from rfdetr.checkpoints.files import CheckpointError
    from rfdetr.training.distributed import is_main_process
    from rfdetr.training.engine import NonFiniteLossError

    try:
        result = train()
    except (FileNotFoundError, ValueError, CheckpointError, WeightsDownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except RunInterrupted as interrupted:
        print(f"interrupted ({interrupted.reason}): the last checkpoint is intact; continue with: {interrupted}",
              file=sys.stderr)
        return interrupted.exit_code
    if is_main_process():
        print(f"done: best {metric} AP {result.best_metric:.4f} at epoch {result.best_epoch}; "
              f"weights in {result.output_dir}/checkpoint_best_total.pth")
    return 0


def say_dropped_copies(dropped: list[str]) -> None:
    """Tell the user which copies of the weights an upstream file held that the written file leaves out."""
    if dropped:
        print(f"left out upstream's Lightning copies ({', '.join(dropped)}): the file keeps one set of weights, "
              "its 'model'")
