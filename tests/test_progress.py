"""Progress output: a bar on a terminal, a line every ~30 s otherwise, and the per-epoch summary."""

from __future__ import annotations

import io
import logging

from rfdetr.training.progress import Progress, epoch_summary, resolve_mode


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_a_bar_on_a_terminal_and_lines_elsewhere():
    assert resolve_mode("auto", _Terminal()) == "bar"
    assert resolve_mode("auto", io.StringIO()) == "line"
    assert resolve_mode("none", _Terminal()) == "none"


def test_line_mode_logs_only_every_interval(caplog):
    now = [0.0]
    progress = Progress("line", total=100, desc="epoch 3", interval=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="rfdetr.training.progress"):
        for _ in range(100):  # 100 steps of 1 s: a line after 30, 60 and 90 s, none for the last step
            now[0] += 1.0
            progress.update(loss="0.500")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["epoch 3: 30/100 steps, loss 0.500, 30 s", "epoch 3: 60/100 steps, loss 0.500, 60 s",
                     "epoch 3: 90/100 steps, loss 0.500, 90 s"]


def test_none_and_short_passes_print_nothing(caplog):
    with caplog.at_level(logging.INFO):
        for mode in ("none", "line"):
            progress = Progress(mode, total=5, desc="valid")
            for _ in range(5):
                progress.update()
            progress.close()
    assert not caplog.records


def test_epoch_summary_names_losses_lr_and_both_models_ap():
    record = {"epoch": 4, "train_loss": 1.23456, "train_lr": 1e-4, "valid_loss": 2.5, "valid_bbox_AP": 0.25,
              "valid_bbox_AP50": 0.5, "ema_valid_bbox_AP": 0.3, "ema_valid_bbox_AP50": 0.55, "valid_segm_AP": None}
    line = epoch_summary(record, epochs=10, seconds=12.4, select_on="bbox")
    assert line == ("epoch 4/9 (12 s): train loss 1.2346, lr 1.00e-04, valid loss 2.5000, bbox AP50 0.500 AP 0.250, "
                    "EMA bbox AP50 0.550 AP 0.300")
