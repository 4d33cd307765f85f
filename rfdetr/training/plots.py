"""Pictures of a run: ``results.png`` (rewritten after every epoch) and the figures of
:mod:`rfdetr.training.pictures`. matplotlib's object API with the Agg canvas: no pyplot state, no
display needed. Every file is written to a temporary beside it and renamed, so a reader never sees
half a picture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

LOSS_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")


def save_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` then rename the temporary over ``path`` (same folder, same suffix)."""
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _figure(rows: int, columns: int, size: tuple[float, float], layout: str | None = "constrained"):
    """A figure on the Agg canvas. ``layout=None`` leaves the margins to the caller: constrained
    layout measures every label first, which is half the cost of drawing a small figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100, layout=layout)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False)


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["epoch"], float(r[key])) for r in history if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def write_results_plot(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Training losses by term, validation loss, bbox (and segm) AP/AP50 of the regular and EMA
    weights, and the learning rate, per epoch, as one PNG."""
    kinds = [kind for kind in ("bbox", "segm") if any(r.get(f"valid_{kind}_AP") is not None for r in history)]
    # fixed margins: this figure is redrawn after every epoch, and its labels never change length much
    figure, axes = _figure(2, 3, (14, 7), layout=None)
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.07, top=0.95, wspace=0.22, hspace=0.32)
    panels = iter(axes.flat)
    ax = next(panels)
    for term in ("loss",) + LOSS_TERMS:
        epochs, values = _series(history, f"train_{term}")
        if values:
            ax.plot(epochs, values, marker=".", label=term, linewidth=2 if term == "loss" else 1)
    ax.set(title="training loss (weighted total and terms)", xlabel="epoch", yscale="log")
    ax.legend(fontsize=7)
    ax = next(panels)
    for split in ("train", "valid", "ema_valid"):
        epochs, values = _series(history, f"{split}_loss")
        if values:
            ax.plot(epochs, values, marker=".", label=split.replace("_", " "))
    ax.set(title="weighted loss", xlabel="epoch")
    ax.legend(fontsize=7)
    for kind in kinds or ["bbox"]:
        ax = next(panels)
        for prefix, style in (("valid", "-"), ("ema_valid", "--")):
            for metric, colour in (("AP", "tab:blue"), ("AP50", "tab:orange")):
                epochs, values = _series(history, f"{prefix}_{kind}_{metric}")
                if values:
                    ax.plot(epochs, values, style, marker=".", color=colour,
                            label=f"{metric} {'EMA' if prefix == 'ema_valid' else 'regular'}")
        ax.set(title=f"validation {kind} AP", xlabel="epoch", ylim=(0, 1))
        ax.legend(fontsize=7)
    ax = next(panels)
    epochs, values = _series(history, "train_lr")
    ax.plot(epochs, values, marker=".")
    ax.set(title="learning rate (decoder and heads; mean of the epoch)", xlabel="epoch")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax in panels:
        ax.set_visible(False)
    save_atomically(path, lambda temporary: figure.savefig(temporary))


def write_confusion_plot(matrix: np.ndarray, names: Sequence[str], threshold: float, path: Path) -> None:
    """``matrix[predicted, true]`` counts (last row/column: background) as an annotated heat map."""
    labels = list(names) + ["background"]
    side = 2.5 + 0.55 * len(labels)
    figure, axes = _figure(1, 1, (side + 1.5, side))
    ax = axes[0, 0]
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel="true class", ylabel="predicted class",
           title=f"confusion matrix (IoU >= 0.5, score >= {threshold:.2f})")
    top = matrix.max() if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            ax.text(column, row, str(int(count)), ha="center", va="center", fontsize=8,
                    color="white" if count > top / 2 else "black")
    save_atomically(path, lambda temporary: figure.savefig(temporary))
