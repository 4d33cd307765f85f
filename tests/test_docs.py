"""Where the README or the quick-start guide states a default, it is the config field's default."""

from __future__ import annotations

import re
from pathlib import Path

from rfdetr.config import ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _default(config, field: str):
    return config.model_fields[field].default


def _text(name: str) -> str:
    return " ".join((ROOT / name).read_text().split())  # one line: statements wrap across lines


def test_the_quick_start_says_how_gradient_checkpointing_is_set_by_default():
    row = next(line for line in (ROOT / "QUICK_START_GUIDE.md").read_text().splitlines()
               if line.startswith("| out of memory"))
    turned = re.search(r"`--gradient_checkpointing ([01])`", row)
    assert turned, row
    # The flag the row names must be the one that changes the default.
    assert int(turned.group(1)) == int(not _default(ModelConfig, "gradient_checkpointing")), row


def test_the_readme_states_the_early_stopping_and_ema_defaults():
    text = _text("README.md")
    found = re.search(r"Early stopping is (on|off) \(patience (\d+)", text)
    assert found, "the README states the early-stopping default"
    assert (found.group(1) == "on") == _default(TrainConfig, "early_stopping")
    assert int(found.group(2)) == _default(TrainConfig, "early_stopping_patience")
    assert ("`--use_ema 0` trains without the EMA copy" in text) == _default(TrainConfig, "use_ema")


def test_the_readme_states_the_learning_rate_schedule_default():
    found = re.search(r'`lr_scheduler="(\w+)"` with `lr_drop=(\d+)`', _text("README.md"))
    assert found, "the README states the learning-rate schedule default"
    assert found.group(1) == _default(TrainConfig, "lr_scheduler")
    assert int(found.group(2)) == _default(TrainConfig, "lr_drop")
