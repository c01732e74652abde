"""Excitation Backprop on timm's ResNet and RegNet (paper section III-A, Eq. 2-3).

timm builds these networks from its own blocks (``timm.models.resnet.BasicBlock``
/ ``Bottleneck``, ``timm.models.regnet.Bottleneck``, ``ConvNormAct``,
``BatchNormAct2d``); EB walks a model in the ``features`` + ``head`` form of
docs/internals.md. This module

* puts a timm ResNet or RegNet in that form, sharing its modules
  (:func:`eb_walkable_timm`, :func:`timm_eb_classifier`); and
* gives :mod:`gpf.model.attention` the rules for timm's blocks
  (:func:`step_rules`, :func:`norm_rules`). They reduce every block to the
  rules EB already has: conv + batch norm folded into one layer, ReLU, and the
  residual sum as one linear layer over ``[h, x]`` (docs/attention.md).
  ``BatchNormAct2d`` is an eval-mode batch norm followed by its ``act`` (ReLU,
  or Identity before a residual sum). Drop-path, DropBlock and dropout are the
  identity at inference.

Anything else is refused when the walk is planned, naming the first module EB
cannot pass and why: squeeze-excite and other gates (SE-ResNet, RegNetY),
SiLU/GELU activations (RegNetZ, EfficientNet, ConvNeXt), LayerNorm/GroupNorm,
anti-aliasing pools, TensorFlow-style 'same' padding, other model families.

``attention`` imports this module only once timm is imported (a timm module
can only be in a model after that), so torchvision-only use never imports timm.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Callable

from torch import nn

from .attention import (EBUnsupportedError, Runner, batchnorm_rule, cannot_pass, check_eb_supported,
                        check_running_stats, conv_norm, conv_part, first_module_eb_cannot_pass, residual,
                        shortcut_part)

__all__ = ["eb_walkable_timm", "timm_eb_classifier", "timm_default_eb_layer", "TimmEBClassifier", "eb_family",
           "step_rules", "norm_rules"]

SUPPORTED_FAMILIES = "timm's ResNet (resnet*, resnet*d, resnet*t; no attention) and RegNetX (regnetx_*)"


def _timm():
    import timm.layers
    import timm.models.regnet
    import timm.models.resnet
    return timm


# ----------------------------------------------------------------------------- checks

@functools.lru_cache(maxsize=None)
def _inert_types() -> tuple[type, ...]:
    """Modules that are the identity at inference (EB's semantics, whatever the training flag)."""
    layers = _timm().layers
    return (nn.Identity, nn.Dropout, nn.Dropout2d, layers.DropPath, layers.DropBlock2d)


def _inert(module: nn.Module | None, path: str) -> None:
    """An optional block member that must do nothing at inference (no SE gate, no blur pool)."""
    if module is not None and type(module) not in _inert_types():
        raise cannot_pass(module, path)


def _relu(module: nn.Module, path: str) -> None:
    if type(module) is not nn.ReLU:
        raise cannot_pass(module, path)


def _batchnorm_act_has_relu(norm: nn.Module, path: str) -> bool:
    """``BatchNormAct2d``: eval-mode batch norm, ``drop`` (identity), ``act`` ReLU or Identity."""
    check_running_stats(norm, path)
    _inert(getattr(norm, "drop", None), f"{path}.drop")
    if type(norm.act) is nn.Identity:
        return False
    _relu(norm.act, f"{path}.act")
    return True


def _conv_norm_act_parts(module: nn.Module, path: str) -> tuple[nn.Module, nn.Module | None, str, str | None]:
    """(conv, norm or None, their paths) of a ``ConvNormAct``; its anti-aliasing must be absent."""
    if type(module) is not _timm().layers.ConvNormAct:
        raise cannot_pass(module, path, "expected timm.layers.ConvNormAct here")
    norm, norm_path = module.bn, f"{path}.bn"
    if type(norm) is nn.Sequential:            # apply_norm=False: at most a drop layer
        for name, child in norm.named_children():
            _inert(child, f"{norm_path}.{name}")
        norm, norm_path = None, None
    _inert(getattr(module, "aa", None), f"{path}.aa")
    return module.conv, norm, f"{path}.conv", norm_path


def _conv_norm_act(module: nn.Module, path: str, relu: bool) -> Runner:
    """A ConvNormAct as one EB layer; ``relu`` demands that it ends in a ReLU (inside a block)."""
    conv, norm, conv_path, norm_path = _conv_norm_act_parts(module, path)
    if relu and (norm is None or type(norm.act) is not nn.ReLU):
        act = getattr(norm, "act", None)
        if act is not None and type(act) is not nn.Identity:
            raise cannot_pass(act, f"{norm_path}.act")
        raise cannot_pass(module, path, "this conv has no ReLU, so the next layer's inputs are signed; "
                                        "EB needs non-negative inputs to every layer")
    return conv_norm(conv, norm, conv_path, norm_path)


def _shortcut_parts(module: nn.Module | None, path: str) -> list[tuple[nn.Module, str]]:
    """A downsample as flat (module, path) parts: Sequential children and ConvNormAct's conv and norm."""
    if module is None:
        return []
    if type(module) is nn.Sequential:
        return [part for name, child in module.named_children()
                for part in _shortcut_parts(child, f"{path}.{name}")]
    if type(module) is _timm().layers.ConvNormAct:
        conv, norm, conv_path, norm_path = _conv_norm_act_parts(module, path)
        return [(conv, conv_path)] + ([(norm, norm_path)] if norm is not None else [])
    return [(module, path)]


# ----------------------------------------------------------------------------- block rules

# timm's ResNet blocks, member by member in forward order: ("conv", conv, norm) is conv + folded
# norm + ReLU, ("last", conv, norm) the branch's end, summed with the shortcut; ("relu", act)
# must be a ReLU; ("inert", name) absent or the identity at inference (no SE gate, no blur pool).
_BASIC_BLOCK = (("conv", "conv1", "bn1"), ("inert", "drop_block"), ("relu", "act1"), ("inert", "aa"),
                ("last", "conv2", "bn2"), ("inert", "se"), ("inert", "drop_path"), ("shortcut",),
                ("relu", "act2"))
_BOTTLENECK = (("conv", "conv1", "bn1"), ("relu", "act1"), ("conv", "conv2", "bn2"), ("inert", "drop_block"),
               ("relu", "act2"), ("inert", "aa"), ("last", "conv3", "bn3"), ("inert", "se"),
               ("inert", "drop_path"), ("shortcut",), ("relu", "act3"))


def _resnet_block_rule(members):
    """timm's BasicBlock / Bottleneck: relu(last(body(x)) + shortcut(x)), checked in forward order."""
    def rule(modules, paths) -> Runner:
        block, path = modules[0], paths[0]
        body, last, shortcut = [], None, None
        for kind, *names in members:
            where = [f"{path}.{name}" for name in names]
            if kind in ("conv", "last"):
                conv, norm = (getattr(block, name) for name in names)
                if kind == "conv":
                    body.append(conv_norm(conv, norm, *where, relu=True))
                else:
                    last = conv_part(conv, norm, *where)
            elif kind == "shortcut":
                shortcut = shortcut_part(_shortcut_parts(block.downsample, f"{path}.downsample"),
                                         f"{path}.downsample")
            else:
                (_relu if kind == "relu" else _inert)(getattr(block, names[0], None), where[0])
        return residual(body, last, shortcut)
    return rule


def _regnet_bottleneck_rule(modules, paths) -> Runner:
    """timm's RegNet Bottleneck: act3(conv3(se(conv2(conv1(x)))) + downsample(x)); ``downsample`` None
    means no residual sum, Identity the identity shortcut."""
    b, p = modules[0], paths[0]
    body = [_conv_norm_act(b.conv1, f"{p}.conv1", relu=True), _conv_norm_act(b.conv2, f"{p}.conv2", relu=True)]
    _inert(b.se, f"{p}.se")
    conv, norm, conv_path, norm_path = _conv_norm_act_parts(b.conv3, f"{p}.conv3")
    last = conv_part(conv, norm, conv_path, norm_path)
    if b.downsample is None:
        shortcut = "none"
    else:
        shortcut = shortcut_part(_shortcut_parts(b.downsample, f"{p}.downsample"), f"{p}.downsample")
        _inert(b.drop_path, f"{p}.drop_path")
    if type(b.act3) is not nn.ReLU:
        raise cannot_pass(b.act3, f"{p}.act3", None if type(b.act3) is not nn.Identity else
                          "the block's output has no ReLU (linear_out), so the next block's inputs are signed")
    return residual(body, last, shortcut)


def _conv_norm_act_rule(modules, paths) -> Runner:
    return _conv_norm_act(modules[0], paths[0], relu=False)


@functools.lru_cache(maxsize=None)
def step_rules() -> dict[type, Callable]:
    """timm module type -> EB rule (see :mod:`gpf.model.attention`)."""
    timm = _timm()
    return {timm.models.resnet.BasicBlock: _resnet_block_rule(_BASIC_BLOCK),
            timm.models.resnet.Bottleneck: _resnet_block_rule(_BOTTLENECK),
            timm.models.regnet.Bottleneck: _regnet_bottleneck_rule,
            timm.layers.ConvNormAct: _conv_norm_act_rule,
            timm.layers.BatchNormAct2d: batchnorm_rule}


@functools.lru_cache(maxsize=None)
def norm_rules() -> dict[type, Callable]:
    """Norm + activation types a conv folds with -> check(norm, path) returning 'ends in ReLU'."""
    return {_timm().layers.BatchNormAct2d: _batchnorm_act_has_relu}


# ----------------------------------------------------------------------------- features + head

class TimmEBClassifier(nn.Module):
    """A timm ResNet/RegNet as ``head(features(x))``, sharing the timm model's modules.

    ``default_eb_layer`` is the stride-8 stage (:func:`timm_default_eb_layer`), as for
    gpf's registered backbones.
    """

    def __init__(self, features: nn.Sequential, head: nn.Sequential, default_eb_layer: str):
        super().__init__()
        self.features = features
        self.head = head
        self.default_eb_layer = default_eb_layer

    def forward(self, x):
        return self.head(self.features(x))


def eb_family(model: nn.Module) -> str | None:
    """'resnet' or 'regnet' for the timm classes EB has rules for, else None (cheap: the class only)."""
    timm = _timm()
    if type(model) is timm.models.resnet.ResNet:
        return "resnet"
    if type(model) is timm.models.regnet.RegNet:
        return "regnet"
    return None


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture") if isinstance(cfg, dict) else None
    return f"{type(model).__name__} ({name})" if name else type(model).__name__


def _refuse_family(model: nn.Module) -> EBUnsupportedError:
    path, module, reason = first_module_eb_cannot_pass(model, "")
    first = (f"the first module it cannot pass is {path!r} ({type(module).__module__}."
             f"{type(module).__qualname__}): {reason}" if reason else
             "gpf has no Excitation Backprop rules for this family")
    return EBUnsupportedError(f"timm {_model_name(model)} is not a network Excitation Backprop can walk: "
                              f"{first}. EB walks {SUPPORTED_FAMILIES}.")


def _global_pool(pool: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    """timm's ``SelectAdaptivePool2d`` as torch modules (it has no parameters), then Flatten."""
    kind = str(getattr(pool, "pool_type", "")).lower()
    if type(pool) is not _timm().layers.SelectAdaptivePool2d:
        raise cannot_pass(pool, path, "expected timm.layers.SelectAdaptivePool2d here")
    if kind in ("avg", "fast", "fastavg"):
        layer = nn.AdaptiveAvgPool2d(1)
    elif kind in ("max", "fastmax"):
        layer = nn.AdaptiveMaxPool2d(1)
    elif kind == "":
        layer = nn.Identity()
    else:
        raise cannot_pass(pool, path, f"pool_type={kind!r} mixes a max and an average pool; EB walks "
                                      "'avg' and 'max' (timm.create_model(..., global_pool='avg'))")
    return [("pool", layer), ("flatten", nn.Flatten(1))]


def _resnet_parts(model) -> tuple[list, list]:
    names = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")
    head = _global_pool(model.global_pool, "global_pool")
    if model.drop_rate:
        head.append(("drop", nn.Dropout(model.drop_rate)))
    return [(name, getattr(model, name)) for name in names], head + [("fc", model.fc)]


def _regnet_parts(model) -> tuple[list, list]:
    stages = [(name, nn.Sequential(OrderedDict(getattr(model, name).named_children())))
              for name in ("s1", "s2", "s3", "s4")]
    classifier = model.head
    if type(classifier).__name__ != "ClassifierHead":
        raise cannot_pass(classifier, "head", "expected timm's ClassifierHead (pool, dropout, fc)")
    head = _global_pool(classifier.global_pool, "head.global_pool")
    return ([("stem", model.stem), *stages, ("final_conv", model.final_conv)],
            head + [("drop", classifier.drop), ("fc", classifier.fc)])


def eb_walkable_timm(model: nn.Module) -> tuple[nn.Sequential, nn.Sequential]:
    """(features, head) of a timm ResNet or RegNet, ``head(features(x)) == model(x)`` (eval).

    The modules are the model's own (shared, not copied): ``features`` holds
    ``conv1 bn1 act1 maxpool layer1..layer4`` (ResNet) or ``stem s1..s4 final_conv``
    (RegNet, each stage an ``nn.Sequential`` of its blocks), so its state-dict keys are
    timm's with a ``features.`` prefix; ``head`` is global pool, flatten, [dropout], fc.
    A gpf backbone built from timm uses ``features`` as its ``nn.Sequential`` trunk.

    Raises :class:`~gpf.model.attention.EBUnsupportedError` for any other network,
    naming the first module EB cannot pass and why; the whole walk is checked here,
    before anything is computed.
    """
    family = eb_family(model)
    if family is None:
        raise _refuse_family(model)
    features, head = (_resnet_parts if family == "resnet" else _regnet_parts)(model)
    features, head = nn.Sequential(OrderedDict(features)), nn.Sequential(OrderedDict(head))
    check_eb_supported(TimmEBClassifier(features, head, default_eb_layer="features"))
    return features, head


def timm_default_eb_layer(model: nn.Module) -> str:
    """The read-out layer at stride 8 (``features.layer2`` / ``features.s2``), as gpf's registered
    backbones use; the last stage at stride <= 8 where none is exactly 8."""
    info = [entry for entry in getattr(model, "feature_info", []) if entry.get("reduction", 99) <= 8]
    if not info:
        raise EBUnsupportedError(f"timm {_model_name(model)} reports no stage at stride <= 8 in its "
                                 "feature_info; pass the EB layer explicitly")
    exact = [entry for entry in info if entry["reduction"] == 8]
    return f"features.{(exact or info)[-1]['module']}"


def timm_eb_classifier(model: nn.Module) -> TimmEBClassifier:
    """A timm ResNet/RegNet classifier in the form EB walks, reading maps at stride 8 by default."""
    features, head = eb_walkable_timm(model)
    return TimmEBClassifier(features, head, timm_default_eb_layer(model))
