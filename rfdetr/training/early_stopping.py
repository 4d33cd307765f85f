"""Early stopping on a validation metric that should grow (AP)."""

from __future__ import annotations


class EarlyStopping:
    """Stop after ``patience`` epochs in which the metric never beat the best by more than ``min_delta``."""

    def __init__(self, patience: int, min_delta: float):
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.epochs_without_improvement = 0

    def update(self, value: float) -> None:
        if self.best is None or value > self.best + self.min_delta:
            self.best = value
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1

    @property
    def should_stop(self) -> bool:
        return self.epochs_without_improvement >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "epochs_without_improvement": self.epochs_without_improvement}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.epochs_without_improvement = int(state["epochs_without_improvement"])
