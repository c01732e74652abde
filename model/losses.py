"""Earth Mover's Distance loss between score distributions (paper Eq. 1).

    EMD(q, q_hat) = ( 1/N * sum_k |CDF_q(k) - CDF_q_hat(k)|^r )^(1/r)

over the N ordered score buckets. The paper trains with r = 2 and reports r = 1
for evaluation (section IV-B); :func:`gpf.model.metrics.evaluate` computes the
latter in NumPy.
"""
from __future__ import annotations

from numbers import Real

import torch

from ..errors import OptionError
from .metrics import DistributionError

__all__ = ["emd_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def emd_loss(pred: torch.Tensor, target, r: float = 2, reduction: str = "mean",
             validate: bool = True) -> torch.Tensor:
    """EMD between predicted and target score distributions (paper Eq. 1).

    Args:
        pred: ``[..., N]`` non-negative scores per bucket, normally the softmax
            output. Each row is divided by its sum; for softmax output that is
            a no-op, and gradients with respect to the logits are unchanged (the
            softmax Jacobian removes the component it adds).
        target: ``[..., N]`` distributions or raw vote counts (tensor, array or
            nested lists), l1-normalised per row; moved to ``pred``'s device.
        r: the norm's power, ``>= 1`` (2 for training, 1 for evaluation).
        reduction: ``'mean'`` (over all rows, the default), ``'sum'`` or
            ``'none'`` (shape ``pred.shape[:-1]``).
        validate: check that no value is negative or non-finite and no row sums
            to 0 (one host-device sync per call); ``False`` skips it.

    Returns:
        The loss, in ``pred``'s dtype (float32 for half-precision input, where
        the CDFs would lose too much precision).

    The r-th root has an infinite derivative at 0, so a row whose CDFs match
    exactly would give NaN gradients; such rows get the zero subgradient
    instead (``where`` guards both the value and the gradient path), and the
    value stays exact.
    """
    if reduction not in _REDUCTIONS:
        raise OptionError(f"reduction must be one of {', '.join(_REDUCTIONS)}; got {reduction!r}", param="reduction")
    if isinstance(r, bool) or not isinstance(r, Real) or not r >= 1:
        raise OptionError(f"r must be a number >= 1 (2 for training, 1 for evaluation), got {r!r}", param="r")
    pred, target = _as_float_pair(pred, target)
    if validate:
        _check_distributions(pred, target)
    cdf_gap = (torch.cumsum(pred / pred.sum(-1, keepdim=True), dim=-1)
               - torch.cumsum(target / target.sum(-1, keepdim=True), dim=-1)).abs()
    mean_power = cdf_gap.mean(-1) if r == 1 else cdf_gap.pow(r).mean(-1)
    loss = mean_power if r == 1 else _safe_root(mean_power, r)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _safe_root(x: torch.Tensor, r: float) -> torch.Tensor:
    """``x ** (1/r)`` for ``x >= 0`` with gradient 0 (not inf or NaN) at ``x == 0``."""
    positive = x > 0
    safe_x = torch.where(positive, x, torch.ones_like(x))
    return torch.where(positive, safe_x.pow(1.0 / r), torch.zeros_like(x))


def _as_float_pair(pred, target) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(pred, torch.Tensor):
        raise TypeError("pred must be a torch.Tensor (the model's softmax output), "
                        f"got {type(pred).__name__}")
    if not pred.is_floating_point():
        raise TypeError(f"pred must be a floating-point tensor, got dtype {pred.dtype}")
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    target = torch.as_tensor(target, device=pred.device).to(pred.dtype)
    if pred.dim() == 0 or pred.shape[-1] == 0:
        raise ValueError(f"pred must have shape [..., N] with N >= 1 score buckets, got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise DistributionError(f"target shape {tuple(target.shape)} does not match pred shape "
                                f"{tuple(pred.shape)}; both must be [..., N] over the same N score buckets")
    return pred, target


def _check_distributions(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Raise on negative/non-finite values or all-zero rows (one device sync)."""
    flags = torch.stack([
        (pred < 0).any(), (~torch.isfinite(pred)).any(), (pred.sum(-1) <= 0).any(),
        (target < 0).any(), (~torch.isfinite(target)).any(), (target.sum(-1) <= 0).any(),
    ]).tolist()
    problems = ("holds negative values (pass softmax probabilities, not logits)",
                "holds NaN or inf", "has a row that sums to 0 (no distribution)")
    for i, flagged in enumerate(flags):
        if flagged:
            which = "pred" if i < 3 else "target"
            tensor = pred if i < 3 else target
            row = _first_bad_row(tensor, i % 3)
            raise DistributionError(f"emd_loss: {which} {problems[i % 3]}, first at row {row}")


def _first_bad_row(tensor: torch.Tensor, problem: int) -> int:
    rows = tensor.reshape(-1, tensor.shape[-1])
    if problem == 0:
        bad = (rows < 0).any(-1)
    elif problem == 1:
        bad = (~torch.isfinite(rows)).any(-1)
    else:
        bad = rows.sum(-1) <= 0
    return int(torch.nonzero(bad)[0, 0])
