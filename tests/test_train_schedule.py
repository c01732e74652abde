"""The paper's schedule (gpf.train.schedule): SGD with momentum, StepLR, early stopping."""
from __future__ import annotations

import pytest
import torch

from gpf.train.schedule import EarlyStopping, make_optimizer, make_scheduler


def test_step_lr_divides_by_ten_every_ten_epochs():
    model = torch.nn.Linear(2, 1)
    optimizer = make_optimizer(model.parameters(), 0.01, 0.9, 0.0)
    scheduler = make_scheduler(optimizer, 10, 0.1)
    lrs = []
    for _ in range(25):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == lrs[9] == 0.01
    assert lrs[10] == pytest.approx(0.001) and lrs[19] == pytest.approx(0.001)
    assert lrs[20] == pytest.approx(0.0001)
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_early_stopping_counts_epochs_without_a_strict_improvement():
    stopper = EarlyStopping(patience=2)
    decisions = []
    for epoch, loss in enumerate([1.0, 0.8, 0.8, 0.9, 0.7, 0.75, 0.71], start=1):
        improved = stopper.update(loss, epoch)
        decisions.append((improved, stopper.should_stop))
    assert decisions == [(True, False), (True, False), (False, False), (False, True),
                         (True, False), (False, False), (False, True)]
    assert (stopper.best, stopper.best_epoch) == (0.7, 5)
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert restored.state_dict() == stopper.state_dict()
    assert not EarlyStopping(patience=0).should_stop
