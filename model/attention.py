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
  ``[W', I]`` (or ``[W', W_down']``); its denominator is ``W'+ h + x``.
* torchvision BasicConv2d (conv + folded bn + relu) and InceptionA..E: mirror
  torchvision's forward; each slice of a concatenation goes back to its branch,
  and a unit feeding several branches sums what it receives from all of them.

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
# Batch-norm folding and the per-module forward rules.
# --------------------------------------------------------------------------- #

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


def _batchnorm_affine(bn: nn.BatchNorm2d, path: str) -> tuple[Tensor, Tensor]:
    """(scale, shift) of an eval-mode batch norm: y = scale * x + shift."""
    if bn.running_mean is None or bn.running_var is None:
        raise NotImplementedError(
            f"batch norm {path!r} keeps no running statistics (track_running_stats=False); "
            "Excitation Backprop folds batch norm with its running statistics")
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
        raise NotImplementedError(
            f"Excitation Backprop expected {path!r} to be {kind.__module__}.{kind.__name__}, "
            f"found {_type_name(module)}")
    return module


def _type_name(module) -> str:
    kind = type(module)
    return f"{kind.__module__}.{kind.__qualname__}"


def _conv_bn(tape: _Tape, x: _Value, conv: nn.Conv2d, bn: nn.BatchNorm2d | None,
             conv_path: str, bn_path: str | None = None) -> _Value:
    _expect(conv, nn.Conv2d, conv_path)
    if bn is not None:
        _expect(bn, nn.BatchNorm2d, bn_path)
    weight, bias = fold_batchnorm(conv, bn, name=bn_path)
    return tape.linear([(_Conv(weight, conv, conv_path), x)], bias)


def _conv_bn_relu(tape, x, conv, bn, conv_path, bn_path):
    return tape.relu(_conv_bn(tape, x, conv, bn, conv_path, bn_path))


def _conv_step(tape, x, modules, paths):
    conv, bn = modules if len(modules) == 2 else (modules[0], None)
    return _conv_bn(tape, x, conv, bn, paths[0], paths[-1])


def _batchnorm_step(tape, x, modules, paths):
    scale, shift = _batchnorm_affine(modules[0], paths[0])
    return tape.linear([(_ChannelScale(scale), x)], shift)


def _linear_step(tape, x, modules, paths):
    layer = modules[0]
    bias = layer.bias.detach().float() if layer.bias is not None else None
    return tape.linear([(_Dense(layer.weight.detach().float()), x)], bias)


def _relu_step(tape, x, modules, paths):
    return tape.relu(x)


def _pass_step(tape, x, modules, paths):
    return x  # dropout (inference) and identity: the same activation


def _flatten_step(tape, x, modules, paths):
    flatten = modules[0]
    return tape.reshape(x, torch.flatten(x.tensor, flatten.start_dim, flatten.end_dim))


def _max_pool_step(tape, x, modules, paths):
    pool = modules[0]
    return tape.max_pool(x, F.max_pool2d, kernel_size=pool.kernel_size, stride=pool.stride,
                         padding=pool.padding, dilation=pool.dilation, ceil_mode=pool.ceil_mode)


def _adaptive_max_pool_step(tape, x, modules, paths):
    return tape.max_pool(x, F.adaptive_max_pool2d, output_size=modules[0].output_size)


def _avg_pool_step(tape, x, modules, paths):
    pool = modules[0]
    op = _AvgPool(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode,
                  pool.count_include_pad, pool.divisor_override)
    return tape.linear([(op, x)], None)


def _adaptive_avg_pool_step(tape, x, modules, paths):
    return tape.linear([(_AdaptiveAvgPool(modules[0].output_size), x)], None)


def _shortcut(block: nn.Module, path: str) -> tuple[_Operator, Tensor | None]:
    """The residual shortcut as a linear operator: identity or the (folded) downsample conv."""
    downsample = block.downsample
    if downsample is None:
        return _Identity(), None
    parts = list(downsample.children()) if type(downsample) is nn.Sequential else [downsample]
    if not 1 <= len(parts) <= 2 or (len(parts) == 2 and type(parts[1]) is not nn.BatchNorm2d):
        raise NotImplementedError(
            f"Excitation Backprop supports a residual downsample of Conv2d [+ BatchNorm2d] only; "
            f"{path}.downsample is {[_type_name(p) for p in parts]}")
    conv = _expect(parts[0], nn.Conv2d, f"{path}.downsample.0")
    weight, bias = fold_batchnorm(conv, parts[1] if len(parts) == 2 else None, name=f"{path}.downsample.1")
    return _Conv(weight, conv, f"{path}.downsample.0"), bias


def _residual(tape, x, block, body: Sequence[tuple[str, str]], path) -> _Value:
    """``relu(bn_k(conv_k(... relu(bn_1(conv_1(x))))) + shortcut(x))`` as in torchvision.

    The last conv and the shortcut form one linear layer over [h, x] (section
    III-A's rule with weights [W', I] or [W', W_down']), so the sum never
    produces negative probabilities.
    """
    _expect(block.relu, nn.ReLU, f"{path}.relu")
    h = x
    for conv_name, bn_name in body[:-1]:
        h = _conv_bn_relu(tape, h, getattr(block, conv_name), getattr(block, bn_name),
                          f"{path}.{conv_name}", f"{path}.{bn_name}")
    conv_name, bn_name = body[-1]
    conv = _expect(getattr(block, conv_name), nn.Conv2d, f"{path}.{conv_name}")
    bn = _expect(getattr(block, bn_name), nn.BatchNorm2d, f"{path}.{bn_name}")
    weight, bias = fold_batchnorm(conv, bn, name=f"{path}.{bn_name}")
    shortcut_op, shortcut_bias = _shortcut(block, path)
    if shortcut_bias is not None:
        bias = shortcut_bias if bias is None else bias + shortcut_bias
    summed = tape.linear([(_Conv(weight, conv, f"{path}.{conv_name}"), h), (shortcut_op, x)], bias)
    return tape.relu(summed)


def _basic_block_step(tape, x, modules, paths):
    return _residual(tape, x, modules[0], [("conv1", "bn1"), ("conv2", "bn2")], paths[0])


def _bottleneck_step(tape, x, modules, paths):
    return _residual(tape, x, modules[0], [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")],
                     paths[0])


def _basic_conv2d(tape, x, module, path):
    _expect(module, _torchvision_inception().BasicConv2d, path)
    return _conv_bn_relu(tape, x, module.conv, module.bn, f"{path}.conv", f"{path}.bn")


def _basic_conv2d_step(tape, x, modules, paths):
    return _basic_conv2d(tape, x, modules[0], paths[0])


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


def _inception_step(tape, x, modules, paths):
    block, path = modules[0], paths[0]
    outputs = []
    for branch in _INCEPTION_BRANCHES[type(block).__name__]:
        h = x
        for stage in branch:
            if isinstance(stage, str):
                h = _basic_conv2d(tape, h, getattr(block, stage), f"{path}.{stage}")
            elif stage[0] == "avg_pool":
                h = tape.linear([(_AvgPool(**stage[1]), h)], None)
            elif stage[0] == "max_pool":
                h = tape.max_pool(h, F.max_pool2d, **stage[1])
            else:  # InceptionE's split
                h = tape.concat([_basic_conv2d(tape, h, getattr(block, name), f"{path}.{name}")
                                 for name in stage])
        outputs.append(h)
    return tape.concat(outputs)


def _torchvision_inception():
    from torchvision.models import inception
    return inception


def _step_rules() -> dict[type, Callable]:
    """Module type -> forward rule; exact types (a subclass may change ``forward``)."""
    from torchvision.models import resnet
    inception = _torchvision_inception()
    rules = {
        nn.Conv2d: _conv_step, nn.BatchNorm2d: _batchnorm_step, nn.Linear: _linear_step,
        nn.ReLU: _relu_step, nn.Dropout: _pass_step, nn.Dropout2d: _pass_step,
        nn.Identity: _pass_step, nn.Flatten: _flatten_step,
        nn.MaxPool2d: _max_pool_step, nn.AdaptiveMaxPool2d: _adaptive_max_pool_step,
        nn.AvgPool2d: _avg_pool_step, nn.AdaptiveAvgPool2d: _adaptive_avg_pool_step,
        resnet.BasicBlock: _basic_block_step, resnet.Bottleneck: _bottleneck_step,
        inception.BasicConv2d: _basic_conv2d_step,
    }
    for name in _INCEPTION_BRANCHES:
        rules[getattr(inception, name)] = _inception_step
    return rules


def supported_module_names() -> list[str]:
    """Dotted names of the module types Excitation Backprop has a rule for."""
    return sorted(f"{kind.__module__}.{kind.__qualname__}" for kind in _step_rules())


# --------------------------------------------------------------------------- #
# The model as a chain of steps: features children, then head children.
# --------------------------------------------------------------------------- #

@dataclass
class _Step:
    modules: tuple[nn.Module, ...]   # one module, or (Conv2d, BatchNorm2d) folded
    paths: tuple[str, ...]           # their qualified names
    rule: Callable
    in_features: bool
    names: list[str] = field(default_factory=list)  # read-out names of the output, in order

    def run(self, tape: _Tape, x: _Value) -> _Value:
        return self.rule(tape, x, self.modules, self.paths)


def _model_parts(model: nn.Module) -> tuple[nn.Sequential, nn.Sequential]:
    for part in ("features", "head"):
        if not isinstance(getattr(model, part, None), nn.Sequential):
            raise TypeError(
                f"Excitation Backprop needs a model with .features and .head, both nn.Sequential "
                f"(forward = head(features(x)), see docs/internals.md); "
                f"{type(model).__name__}.{part} is {_type_name(getattr(model, part, None))}")
    return model.features, model.head


def _build_chain(model: nn.Module) -> list[_Step]:
    features, head = _model_parts(model)
    rules = _step_rules()
    steps: list[_Step] = []
    _append_steps(steps, features, "features", rules, in_features=True)
    _append_steps(steps, head, "head", rules, in_features=False)
    return steps


def _append_steps(steps: list[_Step], container: nn.Sequential, prefix: str,
                  rules: dict, in_features: bool) -> None:
    """Flatten nested Sequentials; fold a BatchNorm2d into the Conv2d right before it."""
    first = len(steps)
    previous: _Step | None = None  # the step made of this container's previous child
    for name, module in container.named_children():
        path = f"{prefix}.{name}"
        if type(module) is nn.Sequential:
            _append_steps(steps, module, path, rules, in_features)
            previous = None
            continue
        if type(module) not in rules:
            raise NotImplementedError(
                f"Excitation Backprop has no rule for module {path!r} of type "
                f"{_type_name(module)}; supported: {', '.join(supported_module_names())}")
        if (type(module) is nn.BatchNorm2d and previous is not None
                and len(previous.modules) == 1 and type(previous.modules[0]) is nn.Conv2d):
            previous.modules += (module,)  # the conv's output is read as the bn's
            previous.paths += (path,)
            previous.names.append(path)
            continue
        previous = _Step((module,), (path,), rules[type(module)], in_features, [path])
        steps.append(previous)
    if len(steps) > first and in_features:
        steps[-1].names.append(prefix)


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
