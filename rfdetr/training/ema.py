"""Exponential moving average of the model weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """An eval-mode copy whose entries follow ``ema = d * ema + (1 - d) * model`` after each step.

    ``d = decay * (1 - exp(-updates / tau))`` ramps up over the first steps (``tau = 0``: constant
    ``decay``). Every floating-point state-dict entry of a trainable parameter or buffer is averaged;
    frozen parameters and integer entries are copied.
    """

    def __init__(self, model: nn.Module, decay: float, tau: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        # Frozen parameters (a stage-2 detector) are copied, never averaged: rounding must not move them.
        self.frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def current_decay(self) -> float:
        if self.tau <= 0:
            return self.decay
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        source = model.state_dict()
        for key, value in self.module.state_dict().items():
            if value.dtype.is_floating_point and key not in self.frozen:
                value.mul_(d).add_(source[key].detach().to(value.dtype), alpha=1 - d)
            else:
                value.copy_(source[key])

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
