"""EMD loss (paper Eq. 1) against hand-computed values, finite differences and the NumPy metric."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpf.model.losses import emd_loss


def one_hot(index, n):
    out = torch.zeros(n, dtype=torch.float64)
    out[index] = 1.0
    return out


@pytest.mark.parametrize("pred, target, r, expected", [
    # CDFs [.5, 1] vs [1, 1]: gaps [.5, 0]
    ([0.5, 0.5], [1.0, 0.0], 2, math.sqrt(0.25 / 2)),
    ([0.5, 0.5], [1.0, 0.0], 1, 0.5 / 2),
    # CDFs [.2, .5, 1] vs [.5, .8, 1]: gaps [.3, .3, 0]
    ([0.2, 0.3, 0.5], [0.5, 0.3, 0.2], 2, math.sqrt((0.09 + 0.09) / 3)),
    ([0.2, 0.3, 0.5], [0.5, 0.3, 0.2], 1, 0.6 / 3),
    ([0.2, 0.3, 0.5], [0.5, 0.3, 0.2], 3, ((0.027 + 0.027) / 3) ** (1 / 3)),
    # target given as vote counts: [5, 3, 2] is [.5, .3, .2]
    ([0.2, 0.3, 0.5], [5, 3, 2], 1, 0.6 / 3),
])
def test_hand_computed_values(pred, target, r, expected):
    loss = emd_loss(torch.tensor([pred], dtype=torch.float64), np.array([target]), r=r)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", [2, 7, 10])
def test_one_hot_distributions(n):
    # one-hot at i vs one-hot at j: the CDFs differ by 1 on |i - j| of the N buckets
    for i in range(n):
        for j in range(n):
            pred, target = one_hot(i, n)[None], one_hot(j, n)[None]
            assert emd_loss(pred, target, r=1).item() == pytest.approx(abs(i - j) / n)
            assert emd_loss(pred, target, r=2).item() == pytest.approx(math.sqrt(abs(i - j) / n))


def test_identical_distributions_give_zero():
    rng = np.random.default_rng(0)
    votes = torch.tensor(rng.integers(0, 50, size=(8, 10)) + 1)
    probs = votes.double() / votes.sum(-1, keepdim=True)
    for r in (1, 2, 3):
        assert emd_loss(probs.float(), votes, r=r).item() == pytest.approx(0.0, abs=1e-7)
        assert emd_loss(probs.double(), votes, r=r, reduction="none").abs().max().item() < 1e-12


def test_reductions_and_leading_dims():
    torch.manual_seed(0)
    pred = torch.softmax(torch.randn(2, 3, 10, dtype=torch.float64), -1)
    target = torch.rand(2, 3, 10, dtype=torch.float64)
    per_row = emd_loss(pred, target, reduction="none")
    assert per_row.shape == (2, 3)
    for a in range(2):
        for b in range(3):
            alone = emd_loss(pred[a, b][None], target[a, b][None])
            assert per_row[a, b].item() == pytest.approx(alone.item())
    assert emd_loss(pred, target).item() == pytest.approx(per_row.mean().item())
    assert emd_loss(pred, target, reduction="sum").item() == pytest.approx(per_row.sum().item())


def test_matches_numpy_metric():
    from gpf.model.metrics import emd
    rng = np.random.default_rng(1)
    pred = rng.dirichlet(np.ones(10), size=20)
    votes = rng.integers(0, 30, size=(20, 10)) + 1
    for r in (1, 2):
        torch_value = emd_loss(torch.tensor(pred), torch.tensor(votes), r=r).item()
        assert torch_value == pytest.approx(emd(pred, votes, r=r), rel=1e-12)


def test_gradient_is_finite_and_zero_when_prediction_equals_target():
    logits = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    pred = torch.softmax(logits, -1)
    for r in (1, 2, 3):
        loss = emd_loss(pred, pred.detach(), r=r)
        (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
        assert torch.isfinite(grad).all()
        assert grad.abs().max().item() < 1e-12


def test_rows_at_the_optimum_do_not_disturb_other_rows():
    torch.manual_seed(2)
    pred = torch.softmax(torch.randn(3, 5, dtype=torch.float64), -1).requires_grad_(True)
    target = torch.rand(3, 5, dtype=torch.float64)
    target[1] = pred[1].detach()
    emd_loss(pred, target, reduction="sum").backward()
    alone = pred.detach()[[0]].requires_grad_(True)
    emd_loss(alone, target[[0]], reduction="sum").backward()
    assert torch.isfinite(pred.grad).all()
    assert torch.allclose(pred.grad[0], alone.grad[0])
    assert pred.grad[1].abs().max().item() == 0.0


@pytest.mark.parametrize("r", [1, 2, 3])
def test_gradient_matches_finite_differences(r):
    torch.manual_seed(3)
    # a generic point: no two CDFs coincide, so the loss is differentiable there
    logits = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 6, dtype=torch.float64) + 0.05
    assert torch.autograd.gradcheck(lambda x: emd_loss(torch.softmax(x, -1), target, r=r), (logits,))
    # directly in pred, off the simplex (rows are l1-normalised inside)
    pred = (torch.rand(3, 6, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: emd_loss(x, target, r=r), (pred,))


def test_half_precision_is_computed_in_float32():
    pred = torch.softmax(torch.randn(4, 10), -1)
    target = torch.rand(4, 10)
    loss = emd_loss(pred.half(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(emd_loss(pred, target).item(), abs=2e-3)


def test_accepts_numpy_target():
    pred = torch.tensor([[0.5, 0.5]])
    assert emd_loss(pred, np.array([[3, 0]]), r=1).item() == pytest.approx(0.25)


@pytest.mark.parametrize("pred, target, match", [
    (torch.tensor([[-0.5, 1.5]]), torch.tensor([[1.0, 0.0]]), "pred holds negative values.*logits"),
    (torch.tensor([[0.5, 0.5], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [1, 0]]),
     r"pred has a row that sums to 0.*first at row 1"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([[float("nan"), 0.0]]), "target holds NaN"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 0.0]]), "target has a row that sums to 0"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]]), "does not match pred shape"),
    (torch.tensor(0.5), torch.tensor(0.5), "N >= 1"),
])
def test_rejects_bad_input(pred, target, match):
    with pytest.raises(ValueError, match=match):
        emd_loss(pred, target)


def test_rejects_bad_options():
    pred, target = torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])
    with pytest.raises(ValueError, match="mean, sum, none"):
        emd_loss(pred, target, reduction="avg")
    for r in (0.5, 0, True, "2"):
        with pytest.raises(ValueError, match="r must be a number >= 1"):
            emd_loss(pred, target, r=r)
    with pytest.raises(TypeError, match="torch.Tensor"):
        emd_loss(np.array([[0.5, 0.5]]), target)
    with pytest.raises(TypeError, match="floating-point"):
        emd_loss(torch.tensor([[1, 1]]), target)


def test_validate_false_skips_the_checks():
    pred = torch.tensor([[-0.5, 1.5]])
    assert torch.isfinite(emd_loss(pred, torch.tensor([[1.0, 0.0]]), validate=False))
