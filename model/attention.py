"""Top-down attention maps by Excitation Backprop (paper section III-A, Eq. 2-3).

GPF-CNN crops the foveal view around the peripheral net's attention, computed
with Excitation Backprop (EB; Zhang et al., "Top-down Neural Attention by
Excitation Backprop", ECCV 2016). EB turns the network into a probabilistic
winner-take-all model: the marginal winning probability (MWP) of a unit is the
sum over its parents of P(child | parent) P(parent) (Eq. 2), with
P(a_i | a_j) = Z_j a_i w_ij for w_ij >= 0 and 0 otherwise (Eq. 3). For a layer
``y = W a`` (convolution, linear, or a pooling written as one) that is::

    P_in = a * W+^T (P_out / (W+ a))        # 0 where W+ a == 0; bias not in W+ a

Rules per module (see docs/attention.md for the why of each):

* Conv2d and Linear: the rule above; a Conv2d followed by BatchNorm2d is one
  layer with the batch norm folded in (W' = W * gamma / sqrt(var + eps)), so the
  positive part is taken of the folded weights. A batch norm with no conv before
  it is a per-channel scale and follows the same rule.
* MaxPool2d / AdaptiveMaxPool2d: each window's signal goes to its winner.
* AvgPool2d / AdaptiveAvgPool2d: the rule above with the pooling's own weights,
  i.e. each window's signal is split in proportion to its inputs.
* ReLU, Dropout, Identity, Flatten: the signal passes through (reshaped).
* torchvision BasicBlock / Bottleneck: the residual sum ``conv'(h) + shortcut(x)``
  is one linear layer over its non-negative inputs ``[h, x]`` with weights
  ``[W', I]`` (or ``[W', W_down']``, after an average pool for ResNet-D); its
  denominator is ``W'+ h + x``.
* torchvision BasicConv2d (conv + folded bn + relu) and InceptionA..E: mirror
  torchvision's forward; each slice of a concatenation goes back to its branch,
  and a unit feeding several branches sums what it receives from all of them.
* timm's ResNet / RegNetX blocks, ConvNormAct and BatchNormAct2d: reduced to the
  rules above by gpf.model.eb_timm.

Every rule checks its module's structure when the walk is planned and returns
the runner that computes it, so a network EB cannot walk (GELU, LayerNorm, a
squeeze-excite gate, a module without a rule) is refused before anything is
computed, with :class:`EBUnsupportedError` naming the first such module and why
(:func:`check_eb_supported`).

The signal starts as a one-hot on the target logit (the softmax is not
propagated). The contrastive variant subtracts the MWP of the target's *dual*
unit (the classifier row with negated weights) at the input of the last Linear.

EB reads the model and never writes it: it runs its own float32 forward pass
with inference semantics (batch-norm running statistics, dropout off) whatever
the model's ``training`` flag, installs no hooks, patches nothing and creates
no autograd graph (the transposed operators are called directly), so there is
nothing to restore when it raises.
"""
from __future__ import annotations

import difflib
import functools
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import GPFError


class EBLayerError(GPFError, ValueError):
    """An EB read-out layer that is not a module of the model (the message lists close matches)."""

__all__ = [
    "excitation_backprop",
    "marginal_winning_probability",
    "upsample_map",
    "eb_layer_names",
    "resolve_eb_layer",
    "fold_batchnorm",
    "supported_module_names",
    "check_eb_supported",
    "why_eb_cannot_pass",
    "EBUnsupportedError",
]

UPSAMPLE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


# --------------------------------------------------------------------------- #
# Linear operators: forward with given weights, and their transpose.
# ``weight`` is the signed weight; ``None`` marks an operator whose weights are
# fixed and non-negative (pooling, identity), which is its own positive part.
# --------------------------------------------------------------------------- #

class _Operator:
    weight: Tensor | None = None

    def apply(self, x: Tensor, weight: Tensor | None) -> Tensor:
        raise NotImplementedError

    def transpose(self, s: Tensor, x: Tensor, weight: Tensor | None) -> Tensor:
        """W^T s, shaped like the input ``x`` (the vector-Jacobian product)."""
        raise NotImplementedError

    def positive_weight(self, negate: bool = False) -> Tensor | None:
        """W+ (or (-W)+ for the contrastive dual unit)."""
        if self.weight is None:
            if negate:
                raise ValueError("a fixed non-negative operator has no dual")
            return None
        weight = -self.weight if negate else self.weight
        return weight.clamp_min(0)


class _Conv(_Operator):
    def __init__(self, weight: Tensor, conv: nn.Conv2d, path: str):
        self.weight = weight
        self.stride = tuple(conv.stride)
        self.padding = _conv_padding(conv, path)
        self.dilation = tuple(conv.dilation)
        self.groups = conv.groups

    def apply(self, x, weight):
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def transpose(self, s, x, weight):
        return torch.ops.aten.convolution_backward(
            s, x, weight, None, self.stride, self.padding, self.dilation,
            False, [0, 0], self.groups, (True, False, False))[0]


class _Dense(_Operator):
    def __init__(self, weight: Tensor):
        self.weight = weight

    def apply(self, x, weight):
        return x @ weight.T

    def transpose(self, s, x, weight):
        return s @ weight


class _ChannelScale(_Operator):
    """A batch norm with no convolution before it: y = scale * x (+ shift)."""

    def __init__(self, scale: Tensor):
        self.weight = scale

    def _shaped(self, weight, x):
        return weight.view(1, -1, *([1] * (x.dim() - 2)))

    def apply(self, x, weight):
        return x * self._shaped(weight, x)

    def transpose(self, s, x, weight):
        return s * self._shaped(weight, x)


class _Identity(_Operator):
    def apply(self, x, weight):
        return x

    def transpose(self, s, x, weight):
        return s


class _AvgPool(_Operator):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.padding = _pair(padding)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override

    def apply(self, x, weight):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    def transpose(self, s, x, weight):
        return torch.ops.aten.avg_pool2d_backward(
            s, x, list(self.kernel_size), list(self.stride), list(self.padding),
            self.ceil_mode, self.count_include_pad, self.divisor_override)


class _AdaptiveAvgPool(_Operator):
    def __init__(self, output_size):
        self.output_size = output_size

    def apply(self, x, weight):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def transpose(self, s, x, weight):
        return torch.ops.aten._adaptive_avg_pool2d_backward(s, x)


class _PoolThenConv(_Operator):
    """``conv(avg_pool(x))``, a shortcut of ResNet-D / timm's ``avg_down``; W+ is the conv's.

    The pooled units are hidden units with fixed positive weights, so EB through
    the pooling and the conv in turn equals this one operator with the conv's W+
    (docs/attention.md).
    """

    def __init__(self, pool: _AvgPool, conv: _Conv):
        self.pool, self.conv, self.weight = pool, conv, conv.weight

    def apply(self, x, weight):
        return self.conv.apply(self.pool.apply(x, None), weight)

    def transpose(self, s, x, weight):
        pooled = self.pool.apply(x, None)
        return self.pool.transpose(self.conv.transpose(s, pooled, weight), x, None)


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def _conv_padding(conv: nn.Conv2d, path: str) -> tuple[int, int]:
    if conv.padding_mode != "zeros":
        raise NotImplementedError(
            f"Excitation Backprop supports zero padding only; {path!r} has "
            f"padding_mode={conv.padding_mode!r}")
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise NotImplementedError(
                f"{path!r}: padding='same' with an even kernel pads asymmetrically, "
                "which Excitation Backprop does not support; pad explicitly")
        return tuple(t // 2 for t in total)
    return tuple(conv.padding)


# --------------------------------------------------------------------------- #
# The tape: values, and the nodes recorded above the read-out layer.
# --------------------------------------------------------------------------- #

class _Value:
    """A forward activation; compared by identity (dictionary key of the walk)."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: Tensor):
        self.tensor = tensor


@dataclass(eq=False)
class _Node:
    inputs: tuple[_Value, ...]
    output: _Value

    def backward(self, p_out: Tensor) -> list[Tensor]:
        """Winning probability of each input given that of the output (Eq. 2)."""
        raise NotImplementedError


@dataclass(eq=False)
class _LinearNode(_Node):
    """``y = sum_k op_k(x_k) + b`` with one normalisation over all terms (Eq. 3)."""

    operators: tuple[_Operator, ...] = ()
    has_bias: bool = False

    def backward(self, p_out, negate: bool = False):
        weights = [op.positive_weight(negate) for op in self.operators]
        if not negate and not self.has_bias and all(op.weight is None for op in self.operators):
            denominator = self.output.tensor  # fixed positive weights: W+ a is the output
        else:
            denominator = _add_all(op.apply(x.tensor, w)
                                   for op, x, w in zip(self.operators, self.inputs, weights))
        ratio = _safe_ratio(p_out, denominator)
        return [x.tensor * op.transpose(ratio, x.tensor, w)
                for op, x, w in zip(self.operators, self.inputs, weights)]


@dataclass(eq=False)
class _PassNode(_Node):
    """ReLU: a unit's only child is the unit before it."""

    def backward(self, p_out):
        return [p_out]


@dataclass(eq=False)
class _ReshapeNode(_Node):
    def backward(self, p_out):
        return [p_out.reshape(self.inputs[0].tensor.shape)]


@dataclass(eq=False)
class _MaxPoolNode(_Node):
    """Each pooling window's signal goes to its winner (overlapping windows add)."""

    indices: Tensor = field(default=None)

    def backward(self, p_out):
        x = self.inputs[0].tensor
        p_in = torch.zeros_like(x).flatten(2)
        p_in.scatter_add_(2, self.indices.flatten(2), p_out.flatten(2))
        return [p_in.view_as(x)]


@dataclass(eq=False)
class _ConcatNode(_Node):
    """Each channel slice of the concatenation goes back to its branch."""

    def backward(self, p_out):
        sizes = [x.tensor.shape[1] for x in self.inputs]
        return list(torch.split(p_out, sizes, dim=1))


def _safe_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, 0 where the denominator is 0 (the mass stops there)."""
    return torch.where(denominator == 0, 0.0, numerator / denominator)


def _add_all(tensors) -> Tensor:
    """Sum without Python's ``sum`` start value (``0 + t`` would copy ``t``)."""
    iterator = iter(tensors)
    total = next(iterator)
    for tensor in iterator:
        total = total + tensor
    return total


class _Tape:
    """Runs the forward ops; records nodes only once ``recording`` is switched on."""

    def __init__(self):
        self.recording = False
        self.nodes: list[_Node] = []

    def linear(self, terms: Sequence[tuple[_Operator, _Value]], bias: Tensor | None) -> _Value:
        y = _add_all(op.apply(x.tensor, op.weight) for op, x in terms)
        if bias is not None:
            y = y + bias.view(1, -1, *([1] * (y.dim() - 2)))
        out = _Value(y)
        if self.recording:
            self.nodes.append(_LinearNode(tuple(x for _, x in terms), out,
                                          tuple(op for op, _ in terms), bias is not None))
        return out

    def relu(self, x: _Value) -> _Value:
        out = _Value(F.relu(x.tensor))
        if self.recording:
            self.nodes.append(_PassNode((x,), out))
        return out

    def max_pool(self, x: _Value, pool: Callable[..., Tensor], **options) -> _Value:
        if not self.recording:
            return _Value(pool(x.tensor, **options))
        y, indices = pool(x.tensor, return_indices=True, **options)
        out = _Value(y)
        self.nodes.append(_MaxPoolNode((x,), out, indices))
        return out

    def reshape(self, x: _Value, y: Tensor) -> _Value:
        out = _Value(y)
        if self.recording:
            self.nodes.append(_ReshapeNode((x,), out))
        return out

    def concat(self, xs: Sequence[_Value]) -> _Value:
        out = _Value(torch.cat([x.tensor for x in xs], dim=1))
        if self.recording:
            self.nodes.append(_ConcatNode(tuple(xs), out))
        return out


# --------------------------------------------------------------------------- #
# Why a module cannot be walked (named in every refusal).
# --------------------------------------------------------------------------- #

class EBUnsupportedError(GPFError, NotImplementedError):
    """A network Excitation Backprop cannot walk; the message names the first module it cannot
    pass (its path and type) and why. Raised when the walk is planned, before any computation."""


_SIGNED_ACTIVATIONS = frozenset({
    "GELU", "GELUTanh", "QuickGELU", "SiLU", "Swish", "SwishMe", "Mish", "MishMe", "Hardswish",
    "HardSwish", "HardSwishMe", "ELU", "SELU", "CELU", "LeakyReLU", "PReLU", "RReLU", "Tanh",
    "Softplus", "Softsign", "Tanhshrink", "Softshrink", "Hardshrink", "StarReLU"})
_NOT_RELU_ACTIVATIONS = frozenset({"ReLU6", "Hardtanh", "Sigmoid", "Hardsigmoid", "HardSigmoid",
                                   "HardSigmoidMe", "Softmax", "GLU", "Threshold"})
_PER_SAMPLE_NORM = re.compile(r"(Layer|Group|Rms|RMS|Instance|LocalResponse|Evo)Norm")
_GATE = re.compile(r"Attn|Attention|Excit|^SE|SE$|SEModule|Eca|Cbam|SplitAttn|SelectiveKernel|GlobalContext")
_REASONS = {
    "signed": "a signed activation: it lets negative values through, so the units below it are not "
              "non-negative and P(a_i|a_j) = Z a_i w_ij (Eq. 3) is not a probability; EB needs ReLU",
    "not_relu": "an activation other than ReLU (it saturates or gates its input), so a unit is not the "
                "positive part of its weighted input; EB needs ReLU",
    "norm": "it normalises each sample by that sample's own statistics, so it is no fixed linear layer "
            "that could be folded into the weights (as an eval-mode batch norm is) and its output is signed",
    "gate": "an attention or excitation gate multiplies features by a function of themselves: a product "
            "of units, not a weighted sum of non-negative inputs (Eq. 3)",
}
_SUPPORTED_HINT = ("EB walks networks of convolutions, linear layers, ReLU, eval-mode batch norm, "
                   "pooling and residual sums (docs/attention.md)")


def why_eb_cannot_pass(module: nn.Module) -> str | None:
    """Why a module of this kind breaks Excitation Backprop (signed activation, per-sample norm,
    gate), or None when its type says nothing (it may still have no rule)."""
    name = type(module).__name__
    if name in _SIGNED_ACTIVATIONS:
        return _REASONS["signed"]
    if name in _NOT_RELU_ACTIVATIONS:
        return _REASONS["not_relu"]
    if _PER_SAMPLE_NORM.search(name):
        return _REASONS["norm"]
    if _GATE.search(name):
        return _REASONS["gate"]
    return None


def first_module_eb_cannot_pass(module: nn.Module, prefix: str) -> tuple[str, nn.Module, str | None]:
    """(path, module, reason) of the first submodule, in definition order, whose type breaks EB;
    the module itself (reason None) when none does."""
    for name, sub in module.named_modules():
        reason = why_eb_cannot_pass(sub)
        if reason is not None:
            return ".".join(part for part in (prefix, name) if part), sub, reason
    return prefix, module, None


def cannot_pass(module: nn.Module | None, path: str, why: str | None = None) -> EBUnsupportedError:
    """The refusal for ``module`` at ``path``: its type, the reason, and what EB walks."""
    why = why or (why_eb_cannot_pass(module) if module is not None else None) or (
        "no Excitation Backprop rule for this module type")
    return EBUnsupportedError(f"Excitation Backprop cannot pass {path!r} ({_type_name(module)}): {why}. "
                              f"{_SUPPORTED_HINT}")


def _no_rule(module: nn.Module, path: str) -> EBUnsupportedError:
    """A module type without a rule: name the first submodule whose type says why, if any."""
    inner_path, inner, reason = first_module_eb_cannot_pass(module, path)
    if reason is not None:
        return cannot_pass(inner, inner_path, reason)
    return cannot_pass(module, path, "no Excitation Backprop rule for this module type; supported: "
                       + ", ".join(supported_module_names()))


# --------------------------------------------------------------------------- #
# Batch-norm folding and the per-module rules. A rule checks a module's
# structure when the walk is planned (so a network is refused before any
# computation) and returns the runner that computes its forward on the tape.
# --------------------------------------------------------------------------- #

Runner = Callable[[_Tape, _Value], _Value]
#: A checked linear part, built at run time: () -> (operator, bias).
LinearPart = Callable[[], "tuple[_Operator, Tensor | None]"]


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, *,
                   name: str = "batch norm") -> tuple[Tensor, Tensor | None]:
    """(weight, bias) of ``bn(conv(x))`` as one convolution (eval-mode statistics).

    W' = W * gamma / sqrt(var + eps) per output channel and
    b' = (b - mean) * gamma / sqrt(var + eps) + beta, in float32, detached.
    ``name`` is the batch norm's path, for error messages.
    """
    weight = conv.weight.detach().float()
    bias = conv.bias.detach().float() if conv.bias is not None else None
    if bn is None:
        return weight, bias
    scale, shift = _batchnorm_affine(bn, name)
    if scale.shape[0] != weight.shape[0]:
        raise ValueError(f"batch norm {name!r} has {scale.shape[0]} channels but the conv before it "
                         f"has {weight.shape[0]} outputs")
    folded_bias = shift if bias is None else bias * scale + shift
    return weight * scale.view(-1, 1, 1, 1), folded_bias


def check_running_stats(bn: nn.Module, path: str) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise cannot_pass(bn, path, "it keeps no running statistics (track_running_stats=False); "
                                    "Excitation Backprop folds batch norm with its running statistics")


def _batchnorm_affine(bn: nn.BatchNorm2d, path: str) -> tuple[Tensor, Tensor]:
    """(scale, shift) of an eval-mode batch norm: y = scale * x + shift."""
    check_running_stats(bn, path)
    mean = bn.running_mean.detach().float()
    scale = torch.rsqrt(bn.running_var.detach().float() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().float()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().float()
    return scale, shift


def _expect(module: nn.Module | None, kind: type, path: str) -> nn.Module:
    if type(module) is not kind:
        raise cannot_pass(module, path, (why_eb_cannot_pass(module) if module is not None else None)
                          or f"expected {kind.__module__}.{kind.__name__} here")
    return module


def _type_name(module) -> str:
    kind = type(module)
    return f"{kind.__module__}.{kind.__qualname__}"


def norm_has_relu(norm: nn.Module, path: str) -> bool:
    """Check a batch norm (or a norm + activation layer with a rule) and say whether it ends in a ReLU."""
    if type(norm) is nn.BatchNorm2d:
        check_running_stats(norm, path)
        return False
    check = _extension_rules()[1].get(type(norm))
    if check is None:
        raise cannot_pass(norm, path, why_eb_cannot_pass(norm) or "expected an eval-mode batch norm here")
    return check(norm, path)


def _checked_conv(conv: nn.Module, norm: nn.Module | None, conv_path: str,
                  norm_path: str | None) -> tuple[bool, LinearPart]:
    """(norm ends in ReLU, the folded conv as a linear part), checked now."""
    _expect(conv, nn.Conv2d, conv_path)
    _conv_padding(conv, conv_path)
    relu = norm_has_relu(norm, norm_path) if norm is not None else False

    def part():
        weight, bias = fold_batchnorm(conv, norm, name=norm_path)
        return _Conv(weight, conv, conv_path), bias
    return relu, part


def conv_norm(conv: nn.Module, norm: nn.Module | None, conv_path: str, norm_path: str | None = None,
              relu: bool = False) -> Runner:
    """conv -> [batch norm, folded] -> [ReLU] as one EB layer; ``relu`` adds a ReLU after it
    (a norm + activation layer brings its own)."""
    norm_relu, part = _checked_conv(conv, norm, conv_path, norm_path)

    def run(tape, x):
        y = _linear(tape, x, part)
        return tape.relu(y) if relu or norm_relu else y
    return run


def conv_part(conv: nn.Module, norm: nn.Module | None, conv_path: str, norm_path: str | None) -> LinearPart:
    """The last conv (+ folded norm) of a residual branch: a linear part of the sum, no activation."""
    relu, part = _checked_conv(conv, norm, conv_path, norm_path)
    if relu:
        raise cannot_pass(norm, norm_path, "the residual branch ends in an activation before the sum; "
                                           "EB expects conv + norm, then the sum, then ReLU")
    return part


def _linear(tape: _Tape, x: _Value, part: LinearPart) -> _Value:
    op, bias = part()
    return tape.linear([(op, x)], bias)


def shortcut_part(parts: Sequence[tuple[nn.Module, str]], path: str) -> LinearPart | None:
    """A residual shortcut as a linear part: identity (no parts, returns None), or
    ``[AvgPool2d] Conv2d [batch norm]`` (the downsample of torchvision / ResNet-D / timm)."""
    parts = [(m, p) for m, p in parts if type(m) is not nn.Identity]
    if not parts:
        return None
    pool = None
    if type(parts[0][0]) is nn.AvgPool2d:
        (pool, _), parts = parts[0], parts[1:]
    if not 1 <= len(parts) <= 2 or type(parts[0][0]) is not nn.Conv2d:
        module, where = parts[0] if parts else (pool, path)
        raise cannot_pass(module, where, why_eb_cannot_pass(module) or
                          "a residual shortcut must be [AvgPool2d] Conv2d [BatchNorm2d] or the identity")
    (conv, conv_path), norm = parts[0], parts[1] if len(parts) == 2 else (None, None)
    conv_linear = conv_part(conv, norm[0], conv_path, norm[1])
    if pool is None:
        return conv_linear

    def pooled():
        op, bias = conv_linear()
        return _PoolThenConv(_avg_pool_operator(pool), op), bias
    return pooled


def residual(body: Sequence[Runner], last: LinearPart, shortcut: LinearPart | None | str) -> Runner:
    """``relu(last(body(x)) + shortcut(x))``: the last linear part and the shortcut are one linear
    layer over [h, x] (weights [W', I] or [W', W_down']), so no probability goes negative.
    ``shortcut='none'`` is a block without a residual sum."""
    def run(tape, x):
        h = x
        for step in body:
            h = step(tape, h)
        op, bias = last()
        terms = [(op, h)]
        if shortcut != "none":
            short_op, short_bias = shortcut() if shortcut is not None else (_Identity(), None)
            terms.append((short_op, x))
            if short_bias is not None:
                bias = short_bias if bias is None else bias + short_bias
        return tape.relu(tape.linear(terms, bias))
    return run


def _conv_rule(modules, paths) -> Runner:
    conv, norm = modules if len(modules) == 2 else (modules[0], None)
    return conv_norm(conv, norm, paths[0], paths[-1] if norm is not None else None)


def batchnorm_rule(modules, paths) -> Runner:
    """A batch norm with no conv before it: a per-channel scale (+ its ReLU for a norm-act layer)."""
    norm, path = modules[0], paths[0]
    relu = norm_has_relu(norm, path)

    def run(tape, x):
        scale, shift = _batchnorm_affine(norm, path)
        y = tape.linear([(_ChannelScale(scale), x)], shift)
        return tape.relu(y) if relu else y
    return run


def _linear_rule(modules, paths) -> Runner:
    layer = modules[0]

    def run(tape, x):
        bias = layer.bias.detach().float() if layer.bias is not None else None
        return tape.linear([(_Dense(layer.weight.detach().float()), x)], bias)
    return run


def _relu_rule(modules, paths) -> Runner:
    return lambda tape, x: tape.relu(x)


def _pass_rule(modules, paths) -> Runner:
    return lambda tape, x: x  # dropout (inference) and identity: the same activation


def _flatten_rule(modules, paths) -> Runner:
    flatten = modules[0]
    return lambda tape, x: tape.reshape(x, torch.flatten(x.tensor, flatten.start_dim, flatten.end_dim))


def _max_pool_rule(modules, paths) -> Runner:
    pool = modules[0]
    options = dict(kernel_size=pool.kernel_size, stride=pool.stride, padding=pool.padding,
                   dilation=pool.dilation, ceil_mode=pool.ceil_mode)
    return lambda tape, x: tape.max_pool(x, F.max_pool2d, **options)


def _adaptive_max_pool_rule(modules, paths) -> Runner:
    size = modules[0].output_size
    return lambda tape, x: tape.max_pool(x, F.adaptive_max_pool2d, output_size=size)


def _avg_pool_operator(pool: nn.AvgPool2d) -> _AvgPool:
    return _AvgPool(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode,
                    pool.count_include_pad, pool.divisor_override)


def _avg_pool_rule(modules, paths) -> Runner:
    op = _avg_pool_operator(modules[0])
    return lambda tape, x: tape.linear([(op, x)], None)


def _adaptive_avg_pool_rule(modules, paths) -> Runner:
    op = _AdaptiveAvgPool(modules[0].output_size)
    return lambda tape, x: tape.linear([(op, x)], None)


def _torchvision_residual_rule(body: Sequence[tuple[str, str]]):
    """torchvision's BasicBlock / Bottleneck: relu(bn_k(conv_k(... relu(bn_1(conv_1(x))))) + shortcut(x))."""
    def rule(modules, paths) -> Runner:
        block, path = modules[0], paths[0]
        _expect(block.relu, nn.ReLU, f"{path}.relu")
        steps = [conv_norm(getattr(block, c), getattr(block, b), f"{path}.{c}", f"{path}.{b}", relu=True)
                 for c, b in body[:-1]]
        (c, b) = body[-1]
        last = conv_part(getattr(block, c), _expect(getattr(block, b), nn.BatchNorm2d, f"{path}.{b}"),
                         f"{path}.{c}", f"{path}.{b}")
        return residual(steps, last, shortcut_part(_sequence_parts(block.downsample, f"{path}.downsample"),
                                                   f"{path}.downsample"))
    return rule


def _sequence_parts(module: nn.Module | None, path: str) -> list[tuple[nn.Module, str]]:
    """(module, path) of an optional module, or of each child of an nn.Sequential."""
    if module is None:
        return []
    if type(module) is nn.Sequential:
        return [(child, f"{path}.{name}") for name, child in module.named_children()]
    return [(module, path)]


def _basic_conv2d(module, path) -> Runner:
    _expect(module, _torchvision_inception().BasicConv2d, path)
    return conv_norm(module.conv, _expect(module.bn, nn.BatchNorm2d, f"{path}.bn"),
                     f"{path}.conv", f"{path}.bn", relu=True)


def _basic_conv2d_rule(modules, paths) -> Runner:
    return _basic_conv2d(modules[0], paths[0])


# Inception branches, in torchvision's forward order. A string is a BasicConv2d
# child, AVG/MAX the block's internal F.avg_pool2d / F.max_pool2d, and a tuple of
# names is InceptionE's split: both convs read the same input, outputs concatenated.
_AVG_3x3 = ("avg_pool", dict(kernel_size=3, stride=1, padding=1))
_MAX_3x3_S2 = ("max_pool", dict(kernel_size=3, stride=2))
_INCEPTION_BRANCHES = {
    "InceptionA": (("branch1x1",), ("branch5x5_1", "branch5x5_2"),
                   ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                   (_AVG_3x3, "branch_pool")),
    "InceptionB": (("branch3x3",), ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                   (_MAX_3x3_S2,)),
    "InceptionC": (("branch1x1",), ("branch7x7_1", "branch7x7_2", "branch7x7_3"),
                   ("branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4",
                    "branch7x7dbl_5"),
                   (_AVG_3x3, "branch_pool")),
    "InceptionD": (("branch3x3_1", "branch3x3_2"),
                   ("branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"),
                   (_MAX_3x3_S2,)),
    "InceptionE": (("branch1x1",), ("branch3x3_1", ("branch3x3_2a", "branch3x3_2b")),
                   ("branch3x3dbl_1", "branch3x3dbl_2", ("branch3x3dbl_3a", "branch3x3dbl_3b")),
                   (_AVG_3x3, "branch_pool")),
}


def _inception_stage(block, path, stage) -> Runner:
    if isinstance(stage, str):
        return _basic_conv2d(getattr(block, stage), f"{path}.{stage}")
    if stage[0] == "avg_pool":
        op = _AvgPool(**stage[1])
        return lambda tape, h: tape.linear([(op, h)], None)
    if stage[0] == "max_pool":
        return lambda tape, h: tape.max_pool(h, F.max_pool2d, **stage[1])
    split = [_basic_conv2d(getattr(block, name), f"{path}.{name}") for name in stage]  # InceptionE
    return lambda tape, h: tape.concat([run(tape, h) for run in split])


def _inception_rule(modules, paths) -> Runner:
    block, path = modules[0], paths[0]
    branches = [[_inception_stage(block, path, stage) for stage in branch]
                for branch in _INCEPTION_BRANCHES[type(block).__name__]]

    def run(tape, x):
        outputs = []
        for branch in branches:
            h = x
            for stage in branch:
                h = stage(tape, h)
            outputs.append(h)
        return tape.concat(outputs)
    return run


def _torchvision_inception():
    from torchvision.models import inception
    return inception


@functools.lru_cache(maxsize=None)
def _builtin_rules() -> dict[type, Callable]:
    """Module type -> rule; exact types (a subclass may change ``forward``)."""
    from torchvision.models import resnet
    inception = _torchvision_inception()
    rules = {
        nn.Conv2d: _conv_rule, nn.BatchNorm2d: batchnorm_rule, nn.Linear: _linear_rule,
        nn.ReLU: _relu_rule, nn.Dropout: _pass_rule, nn.Dropout2d: _pass_rule,
        nn.Identity: _pass_rule, nn.Flatten: _flatten_rule,
        nn.MaxPool2d: _max_pool_rule, nn.AdaptiveMaxPool2d: _adaptive_max_pool_rule,
        nn.AvgPool2d: _avg_pool_rule, nn.AdaptiveAvgPool2d: _adaptive_avg_pool_rule,
        resnet.BasicBlock: _torchvision_residual_rule([("conv1", "bn1"), ("conv2", "bn2")]),
        resnet.Bottleneck: _torchvision_residual_rule([("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]),
        inception.BasicConv2d: _basic_conv2d_rule,
    }
    for name in _INCEPTION_BRANCHES:
        rules[getattr(inception, name)] = _inception_rule
    return rules


def _extension_rules() -> tuple[dict[type, Callable], dict[type, Callable]]:
    """(step rules, norm-with-activation checks) for timm's blocks (gpf.model.eb_timm).

    A timm module can only be in a model once timm is imported, so timm is never
    imported here for a torchvision network.
    """
    if "timm" not in sys.modules:
        return {}, {}
    from . import eb_timm
    return eb_timm.step_rules(), eb_timm.norm_rules()


def _step_rules() -> dict[type, Callable]:
    return {**_builtin_rules(), **_extension_rules()[0]}


def supported_module_names() -> list[str]:
    """Dotted names of the module types Excitation Backprop has a rule for (timm's once timm is imported)."""
    return sorted(f"{kind.__module__}.{kind.__qualname__}" for kind in _step_rules())


# --------------------------------------------------------------------------- #
# The model as a chain of steps: features children, then head children.
# --------------------------------------------------------------------------- #

@dataclass
class _Step:
    modules: tuple[nn.Module, ...]   # one module, or (Conv2d, batch norm) folded
    paths: tuple[str, ...]           # their qualified names
    rule: Callable                   # (modules, paths) -> Runner, checking the structure
    in_features: bool
    names: list[str] = field(default_factory=list)  # read-out names of the output, in order
    run: Runner | None = None


def _model_parts(model: nn.Module) -> tuple[nn.Sequential, nn.Sequential]:
    for part in ("features", "head"):
        if not isinstance(getattr(model, part, None), nn.Sequential):
            raise TypeError(
                f"Excitation Backprop needs a model with .features and .head, both nn.Sequential "
                f"(forward = head(features(x)), see docs/internals.md); "
                f"{type(model).__name__}.{part} is {_type_name(getattr(model, part, None))}")
    return model.features, model.head


def _build_chain(model: nn.Module) -> list[_Step]:
    """The steps of the walk, every module checked in forward order (the first one EB cannot
    pass raises :class:`EBUnsupportedError`), before anything is computed."""
    features, head = _model_parts(model)
    rules = _step_rules()
    norms = (nn.BatchNorm2d, *_extension_rules()[1])
    steps: list[_Step] = []
    _append_steps(steps, features, "features", rules, norms, in_features=True)
    _append_steps(steps, head, "head", rules, norms, in_features=False)
    for step in steps:
        step.run = step.rule(step.modules, step.paths)
    return steps


def _refuse_rule(modules, paths):
    raise _no_rule(modules[0], paths[0])


def _append_steps(steps: list[_Step], container: nn.Sequential, prefix: str, rules: dict,
                  norms: tuple[type, ...], in_features: bool) -> None:
    """Flatten nested Sequentials; fold a batch norm into the Conv2d right before it (also
    when that conv ends a nested Sequential, as timm's deep stems do)."""
    first = len(steps)
    for name, module in container.named_children():
        path = f"{prefix}.{name}"
        if type(module) is nn.Sequential:
            _append_steps(steps, module, path, rules, norms, in_features)
            continue
        previous = steps[-1] if steps else None
        if (type(module) in norms and previous is not None and previous.in_features == in_features
                and len(previous.modules) == 1 and type(previous.modules[0]) is nn.Conv2d):
            previous.modules += (module,)  # the conv's output is read as the norm's
            previous.paths += (path,)
            previous.names.append(path)
            continue
        steps.append(_Step((module,), (path,), rules.get(type(module), _refuse_rule), in_features, [path]))
    if len(steps) > first and in_features:
        steps[-1].names.append(prefix)


def check_eb_supported(model: nn.Module) -> None:
    """Refuse, before any computation, a model Excitation Backprop cannot walk.

    Raises :class:`EBUnsupportedError` naming the first module (in forward order)
    it cannot pass and why (a signed activation such as GELU or SiLU, a per-sample
    norm such as LayerNorm, an attention gate, a module without a rule), or
    ``TypeError`` for a model without ``.features``/``.head``.
    """
    _build_chain(model)


def eb_layer_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_modules()``) at whose output an EB map can be read.

    These are the children of ``model.features`` (nested Sequentials flattened,
    the container's own name reading its last child), in forward order. A conv
    followed by a batch norm is one layer: its name reads the batch norm's output.
    """
    return [name for step in _build_chain(model) if step.in_features for name in step.names]


def resolve_eb_layer(model: nn.Module, layer: str | None = None) -> str:
    """The read-out layer name EB uses for ``layer`` (None: the model's default).

    The default is ``model.default_eb_layer``, else that of ``model.spec`` (gpf's
    ``Classifier``) or ``model.backbone``.
    A name relative to ``features`` ('pool4') is accepted for 'features.pool4'.
    """
    names = eb_layer_names(model)
    if layer is None:
        layer = _default_layer(model, names)
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name (str) or None, got {type(layer).__name__}")
    for candidate in (layer, f"features.{layer}"):
        if candidate in names:
            return candidate
    raise EBLayerError(_unknown_layer_message(model, layer, names))


def _default_layer(model: nn.Module, names: list[str]) -> str:
    """``default_eb_layer`` of the model, else of its ``.spec`` or ``.backbone``."""
    for owner in (model, getattr(model, "spec", None), getattr(model, "backbone", None)):
        layer = getattr(owner, "default_eb_layer", None) if owner is not None else None
        if layer:
            return layer
    raise EBLayerError(
        f"{type(model).__name__} has no default_eb_layer (nor have its .spec and .backbone); "
        f"pass layer=..., one of: {', '.join(names)}")


def _unknown_layer_message(model: nn.Module, layer: str, names: list[str]) -> str:
    modules = dict(model.named_modules())
    if layer in modules or f"features.{layer}" in modules:
        why = (f"{layer!r} is a module of {type(model).__name__} but not a read-out point: EB maps "
               "are read at the outputs of the children of model.features (not inside a block, "
               "not in the head)")
    else:
        why = f"{type(model).__name__} has no module {layer!r}"
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    if not close and "." not in layer:   # a short name ('pol2') is compared with the short names
        short = {name.split(".", 1)[1]: name for name in names if name.startswith("features.")}
        close = [short[n] for n in difflib.get_close_matches(layer, list(short), n=5, cutoff=0.5)]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return f"unknown EB read-out layer: {why}{hint}; valid layers: {', '.join(names)}"


# --------------------------------------------------------------------------- #
# Forward pass, top-down walk and the public functions.
# --------------------------------------------------------------------------- #

@dataclass
class _Trace:
    logits: _Value
    readout: _Value
    classifier: _LinearNode | None   # the node of the last Linear (for the dual unit)
    nodes: list[_Node]


def _forward(model: nn.Module, images: Tensor, layer: str) -> _Trace:
    """One float32 forward pass; nodes are recorded from ``layer``'s output up."""
    tape = _Tape()
    x = _Value(images)
    readout, classifier = None, None
    for step in _build_chain(model):
        x = step.run(tape, x)
        if type(step.modules[0]) is nn.Linear and tape.recording:
            classifier = tape.nodes[-1]
        if readout is None and layer in step.names:
            readout, tape.recording = x, True
    if x.tensor.dim() != 2:
        raise ValueError(f"{type(model).__name__}.head must end in logits [B, classes], "
                         f"got shape {tuple(x.tensor.shape)}")
    return _Trace(x, readout, classifier, tape.nodes)


def _propagate(nodes: Sequence[_Node], signal: dict[_Value, Tensor]) -> None:
    """Walk ``nodes`` top-down, moving winning probability from outputs to inputs (Eq. 2)."""
    for node in reversed(nodes):
        p_out = signal.pop(node.output, None)
        if p_out is None:
            continue
        for value, p_in in zip(node.inputs, node.backward(p_out)):
            signal[value] = signal[value] + p_in if value in signal else p_in


def _one_hot(logits: Tensor, target) -> Tensor:
    batch, classes = logits.shape
    if target is None:
        index = logits.argmax(dim=1)
    else:
        index = torch.as_tensor(target, device=logits.device)
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(f"target must be an int or integer tensor, got dtype {index.dtype}")
        index = index.long().reshape(-1).expand(batch) if index.numel() == 1 else index.long()
        if index.shape != (batch,):
            raise ValueError(f"target must be an int or have shape [{batch}] (one per image), "
                             f"got shape {tuple(torch.as_tensor(target).shape)}")
        bad = (index < 0) | (index >= classes)
        if bool(bad.any()):
            raise ValueError(f"target {index[bad].tolist()} out of range: the model has "
                             f"{classes} classes (0..{classes - 1})")
    p = torch.zeros_like(logits)
    p[torch.arange(batch, device=logits.device), index] = 1.0
    return p


def _check_inputs(model: nn.Module, images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError("images must be a tensor [B, C, H, W], got "
                         + (f"shape {tuple(images.shape)}" if isinstance(images, Tensor)
                            else type(images).__name__))
    if not images.is_floating_point():
        raise TypeError(f"images must be float (normalised as the backbone expects), got {images.dtype}")
    param = next(model.parameters(), None)
    if param is not None and param.device != images.device:
        raise ValueError(f"images are on {images.device} but the model is on {param.device}; "
                         "move one of them")


def marginal_winning_probability(model: nn.Module, images: Tensor, target=None,
                                 layer: str | None = None, contrastive: bool = False) -> Tensor:
    """Winning probability of every unit at ``layer``'s output, [B, C, h, w] float32.

    The un-summed, un-clamped signal behind :func:`excitation_backprop` (same
    arguments). Non-contrastive, each image's total is 1 when every active unit
    on the way down has a positive denominator W+ a, and at most 1 otherwise.
    Contrastive, it is the target's MWP minus its dual's, summing to ~0.
    """
    _check_inputs(model, images)
    layer = resolve_eb_layer(model, layer)
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        trace = _forward(model, images.detach().float(), layer)
        signal = {trace.logits: _one_hot(trace.logits.tensor, target)}
        if contrastive:
            _contrast_at_classifier(trace, signal, model)
        else:
            _propagate(trace.nodes, signal)
        result = signal.get(trace.readout)
    if result is None:
        result = torch.zeros_like(trace.readout.tensor)
    if result.dim() != 4:
        raise EBLayerError(f"EB read-out layer {layer!r} gives shape {tuple(result.shape)}, "
                           "not a spatial map [B, C, h, w]; choose a layer of model.features")
    return result


def _contrast_at_classifier(trace: _Trace, signal: dict, model: nn.Module) -> None:
    """Zhang et al.'s contrastive MWP: P(target) - P(dual) at the last Linear's input.

    The dual unit has the target's classifier weights negated, so its W+ is the
    target's W-. EB is linear in the signal, so subtracting here or at any layer
    further down (between this one and the read-out) gives the same map.
    """
    if trace.classifier is None:
        raise ValueError(f"contrastive EB needs a Linear classifier in {type(model).__name__}.head")
    nodes = trace.nodes
    position = next(i for i, node in enumerate(nodes) if node is trace.classifier)
    _propagate(nodes[position + 1:], signal)
    p_logits = signal.pop(trace.classifier.output)
    (target,) = trace.classifier.backward(p_logits)
    (dual,) = trace.classifier.backward(p_logits, negate=True)
    below = trace.classifier.inputs[0]
    signal[below] = signal[below] + target - dual if below in signal else target - dual
    _propagate(nodes[:position], signal)


def excitation_backprop(model: nn.Module, images: Tensor, target=None, layer: str | None = None,
                        contrastive: bool = False) -> Tensor:
    """Top-down attention map of ``target`` at ``layer`` (paper Eq. 2-3), [B, h, w].

    Args:
        model: a network with ``.features`` and ``.head`` (``nn.Sequential``),
            forward = head(features(x)) giving logits (docs/internals.md).
        images: [B, C, H, W] float, normalised as the backbone expects, on the
            model's device. Computed in float32 even under autocast.
        target: None (each image's predicted class), an int, or a [B] tensor.
        layer: name in ``model.named_modules()`` whose output the map is read at
            (e.g. 'features.pool4'; see :func:`eb_layer_names`); None uses
            ``model.default_eb_layer`` (or its ``.backbone``'s).
        contrastive: subtract the dual unit's map (Zhang et al. section 3.3).

    Returns:
        float32 [B, h, w] at the layer's resolution: the winning probability
        summed over channels, clamped at 0 (a no-op unless contrastive).
    """
    mwp = marginal_winning_probability(model, images, target, layer, contrastive)
    return mwp.sum(dim=1).clamp_min(0)


def upsample_map(maps, size_hw: Sequence[int], mode: str = "bicubic"):
    """Resize attention maps [B, h, w] (or [h, w]) to ``size_hw`` = (H, W).

    Returns float32 of the same kind (tensor or numpy array). Bicubic
    interpolation can overshoot below 0 near sharp peaks; clamping is left to
    the consumer (the crop search clamps at 0), so the values stay a faithful
    interpolation here.
    """
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"unknown upsample mode {mode!r}; allowed: {', '.join(UPSAMPLE_MODES)}")
    if (len(size_hw) != 2 or any(not isinstance(s, (int, np.integer)) or isinstance(s, bool)
                                 or s <= 0 for s in size_hw)):
        raise ValueError(f"size_hw must be two positive ints (height, width), got {size_hw!r}")
    is_numpy = isinstance(maps, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(maps)) if is_numpy else maps
    if not isinstance(tensor, Tensor) or tensor.dim() not in (2, 3):
        raise ValueError("maps must be [B, h, w] or [h, w], got "
                         + (f"shape {tuple(tensor.shape)}" if hasattr(tensor, "shape") else type(maps).__name__))
    batched = tensor.float().reshape(-1, 1, *tensor.shape[-2:])
    align = False if mode in ("bilinear", "bicubic") else None
    resized = F.interpolate(batched, size=tuple(int(s) for s in size_hw), mode=mode, align_corners=align)
    resized = resized.reshape(*tensor.shape[:-2], *resized.shape[-2:])
    return resized.numpy() if is_numpy else resized
