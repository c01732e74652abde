"""Optimiser, learning-rate schedule and early stopping of the paper (section IV-B).

"Both the two steps adopt the SGD optimization algorithm ... The momentum is 0.9.
The initial learning rate is set to 0.01 and reduced by a factor of 10 every 10
epochs. The training continues until the validation loss reaches a plateau for
10 epochs."
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.SGD:
    """SGD with momentum over the parameters that require gradients."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, step_epochs: int, gamma: float):
    """StepLR stepped once per epoch: lr_e = lr_0 * gamma ** (e // step_epochs)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_epochs, gamma=gamma)


@dataclass
class EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` epochs.

    ``update`` returns True when the loss is a new best (strictly lower). A run
    stops after the epoch whose update leaves ``bad_epochs >= patience``;
    ``patience=0`` disables stopping.
    """
    patience: int
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, loss: float, epoch: int) -> bool:
        if loss < self.best:
            self.best, self.best_epoch, self.bad_epochs = float(loss), int(epoch), 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"patience": self.patience, "best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        # patience may change on resume (RESUME_MUTABLE_KEYS): keep the configured one
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
