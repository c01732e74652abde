"""Backbone registry: the convolutional trunks GPF-CNN is built on.

A backbone is a named ``nn.Sequential`` of torch/torchvision modules (the
contract Excitation Backprop relies on, see docs/internals.md) plus the facts
the rest of gpf needs about it: output channels C, total stride, smallest input
side, the default layer EB reads its map at, the ImageNet normalisation, and
the GIF bottleneck width W1 of the paper's Table II.

Built in: ``vgg16``, ``alexnet``, ``resnet18`` (the paper's "ResNet-16"),
``inception_v3``, ``resnet50`` (not in the paper), and the test-size ``tiny``,
``small``, ``tiny_inception``.
Add your own with :func:`register_backbone`. Any timm model is a backbone as
``timm:NAME`` (:mod:`gpf.model.arch_timm`): :func:`get_spec` and
:func:`create_backbone` take those names too; its ``features`` is then the timm
model itself, and :func:`pooled_descriptor` pools it through timm's head path. ``python -m gpf.model.backbones``
prints the table that ``gpf models`` prints.
"""
from __future__ import annotations

import difflib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import GPFError
from . import arch_alexnet, arch_inception, arch_resnet, arch_small, arch_vgg

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000
TIMM_PREFIX = "timm:"


class BackboneError(GPFError, ValueError):
    """A backbone that cannot be registered or built as asked (the message names it and the fix)."""


class UnknownBackboneError(BackboneError):
    """A backbone name that is not registered; the message lists close matches and every registered name."""


@dataclass(frozen=True)
class BackboneSpec:
    """What gpf knows about a registered backbone (plain, immutable metadata).

    ``stride`` is the nominal total downsampling (input side / feature-map side);
    ``min_input`` the smallest input side that yields a non-empty feature map (at
    least ``stride``); ``default_eb_layer`` a name in ``named_modules()`` of a
    model with ``.features`` (e.g. ``'features.pool3'``): EB reads the map at that
    module's output; ``gif_hidden`` is W1 of the GIF bottleneck (Table II).
    """

    name: str
    channels: int
    stride: int
    min_input: int
    default_eb_layer: str
    gif_hidden: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    torchvision_weights: str | None = None  # e.g. "VGG16_Weights.IMAGENET1K_V1"
    description: str = ""
    provider: str = "gpf"                   # 'gpf' (registered) | 'timm'
    input_multiple: int = 1                 # view sides are resized up to a multiple of this
    fixed_input: tuple[int, int] | None = None   # every view is resized to this (H, W)

    def normalize(self, images):
        """uint8 (or [0, 1] float) images -> this backbone's normalised float input."""
        return normalize_images(images, self.mean, self.std)

    @property
    def is_timm(self) -> bool:
        return self.provider == "timm"

    def record(self) -> dict:
        """Plain description a checkpoint keeps of a subnet (checked when the model is rebuilt)."""
        out = {"backbone": self.name, "provider": self.provider, "channels": self.channels,
               "min_input": self.min_input, "mean": list(self.mean), "std": list(self.std)}
        if self.is_timm:
            from .arch_timm import timm_module

            out["timm_version"] = str(timm_module().__version__)
        return out


@dataclass(frozen=True)
class _Registration:
    spec: BackboneSpec
    build_features: Callable[[], nn.Sequential]
    build_imagenet_head: Callable[[int], nn.Sequential] | None
    torchvision_keys: Mapping[str, str | None] = field(default_factory=dict)


_REGISTRY: "OrderedDict[str, _Registration]" = OrderedDict()
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class Backbone(nn.Module):
    """A registered trunk: ``forward(x) = features(x)`` -> ``[B, C, h, w]``.

    ``x`` is the normalised float input (see :meth:`normalize`). The metadata of
    :class:`BackboneSpec` is available as attributes (``backbone.channels``, ...).
    """

    def __init__(self, spec: BackboneSpec, features: nn.Sequential):
        super().__init__()
        self.spec = spec
        self.features = features

    name = property(lambda self: self.spec.name)
    channels = property(lambda self: self.spec.channels)
    stride = property(lambda self: self.spec.stride)
    min_input = property(lambda self: self.spec.min_input)
    default_eb_layer = property(lambda self: self.spec.default_eb_layer)
    gif_hidden = property(lambda self: self.spec.gif_hidden)
    mean = property(lambda self: self.spec.mean)
    std = property(lambda self: self.spec.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map ``[B, C, h, w]`` (timm: what ``forward_features`` gives: a map, NHWC or tokens)."""
        return feature_map(self.spec, self.features, x)

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled descriptor ``[B, C]`` (see :func:`pooled_descriptor`)."""
        return pooled_descriptor(self.spec, self.features, x)

    def normalize(self, images):
        """uint8 ``[B, 3, H, W]`` (or float in [0, 1]) -> normalised float input."""
        return self.spec.normalize(images)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, stride={self.stride}"


def record_differences(record: Mapping, spec: BackboneSpec) -> list[str]:
    """How a subnet recorded by :meth:`BackboneSpec.record` differs from ``spec`` as built here now."""
    diffs = []
    if record.get("channels") not in (None, spec.channels):
        diffs.append(f"C = {record['channels']} (here {spec.channels})")
    for key in ("mean", "std"):
        saved = record.get(key)
        if saved is not None and (len(saved) != 3 or any(abs(float(a) - b) > 1e-6 for a, b in zip(saved, getattr(spec, key)))):
            diffs.append(f"{key} {list(saved)} (here {list(getattr(spec, key))})")
    if record.get("min_input") not in (None, spec.min_input):
        diffs.append(f"minimum input {record['min_input']} (here {spec.min_input})")
    return diffs


def feature_map(spec: BackboneSpec, features: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of a backbone's ``features`` module on the normalised input ``x``."""
    if spec.is_timm:
        from .arch_timm import timm_features

        return timm_features(features, x, spec)
    return features(x)


def pooled_descriptor(spec: BackboneSpec, features: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[B, C]``: F_sq of Eq. 5, the global average over the feature map of a registered backbone;
    a timm model's own pooling, ``forward_head(..., pre_logits=True)`` (tokens, NHWC maps and head norms
    are handled the model's way)."""
    if spec.is_timm:
        from .arch_timm import timm_descriptor

        return timm_descriptor(features, x, spec)
    return features(x).mean(dim=(2, 3))


def normalize_images(images, mean: Sequence[float], std: Sequence[float]):
    """``(images / 255 - mean) / std`` for uint8, ``(images - mean) / std`` for floats.

    Loaders ship uint8 to keep host-to-device copies small; call this on the
    device. Float input must already be scaled to [0, 1]. Accepts ``[B, 3, H, W]``,
    ``[3, H, W]`` or a list of ``[3, H, W]`` tensors (returns a list).
    """
    if isinstance(images, (list, tuple)):
        return [normalize_images(image, mean, std) for image in images]
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a tensor or a list of tensors, got {type(images).__name__}")
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected RGB images shaped [B, 3, H, W] or [3, H, W], got {list(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.float().div_(255.0)
    elif images.is_floating_point():
        x = images
    else:
        raise TypeError(f"expected uint8 or floating-point images, got {images.dtype}")
    shape = (3, 1, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


def default_imagenet_head(channels: int) -> Callable[[int], nn.Sequential]:
    """GAP -> Flatten -> Linear(C, classes): the head of backbones without one of their own."""
    def build(num_classes: int = IMAGENET_CLASSES) -> nn.Sequential:
        return nn.Sequential(OrderedDict([("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1)),
                                          ("fc", nn.Linear(channels, num_classes))]))
    return build


def register_backbone(name: str, builder: Callable[[], nn.Sequential], *, channels: int, stride: int,
                      min_input: int, default_eb_layer: str, gif_hidden: int,
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                      imagenet_head: Callable[[int], nn.Sequential] | None = None,
                      torchvision_weights: str | None = None,
                      torchvision_keys: Mapping[str, str | None] | None = None,
                      description: str = "", replace: bool = False) -> BackboneSpec:
    """Add a backbone to the registry and return its spec.

    ``builder()`` returns the ``nn.Sequential`` of named children (randomly
    initialised). ``imagenet_head(num_classes)`` builds the ImageNet classifier
    head used by :func:`gpf.model.gpf.imagenet_classifier` (default GAP -> Linear).
    ``torchvision_weights`` names a torchvision weights enum member
    (``"VGG16_Weights.IMAGENET1K_V1"``) for ``weights='imagenet'``;
    ``torchvision_keys`` maps that file's key prefixes to ours
    (``{"features.0.": "features.conv1_1."}``; ``None`` drops a prefix).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BackboneError(f"backbone name must be lower-case letters, digits and '_' "
                         f"starting with a letter, got {name!r}")
    if name in _REGISTRY and not replace:
        raise BackboneError(f"backbone {name!r} is already registered; pass replace=True to override it")
    for label, value in (("channels", channels), ("stride", stride), ("min_input", min_input),
                         ("gif_hidden", gif_hidden)):
        if not isinstance(value, int) or value <= 0:
            raise BackboneError(f"backbone {name!r}: {label} must be a positive int, got {value!r}")
    if min_input < stride:
        raise BackboneError(f"backbone {name!r}: min_input ({min_input}) must be at least the stride ({stride})")
    if not default_eb_layer.startswith("features."):
        raise BackboneError(f"backbone {name!r}: default_eb_layer must name a module under 'features.', "
                         f"got {default_eb_layer!r}")
    for label, value in (("mean", mean), ("std", std)):
        if len(value) != 3:
            raise BackboneError(f"backbone {name!r}: {label} needs 3 values (RGB), got {value!r}")
    spec = BackboneSpec(name=name, channels=channels, stride=stride, min_input=min_input,
                        default_eb_layer=default_eb_layer, gif_hidden=gif_hidden,
                        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                        torchvision_weights=torchvision_weights, description=description)
    _REGISTRY[name] = _Registration(spec, builder, imagenet_head or default_imagenet_head(channels),
                                    dict(torchvision_keys or {}))
    return spec


def list_backbones() -> list[str]:
    """Names of the registered backbones, in registration order."""
    return list(_REGISTRY)


def unknown_backbone_error(name: object) -> UnknownBackboneError:
    names = list(_REGISTRY)
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownBackboneError(f"unknown backbone {name!r}.{hint} Registered backbones: {', '.join(names)}; "
                                "or any timm model as timm:NAME (`gpf models --timm PATTERN` lists them).")


def is_timm_name(name: object) -> bool:
    """True for ``'timm:NAME'`` (a timm model, see :mod:`gpf.model.arch_timm`)."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def _registration(name: str) -> _Registration:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise unknown_backbone_error(name) from None


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a registered backbone or of ``timm:NAME`` (no weights allocated)."""
    if is_timm_name(name):
        from .arch_timm import timm_spec

        return timm_spec(name)
    return _registration(name).spec


def torchvision_keys(name: str) -> dict[str, str | None]:
    """Prefix map from the torchvision state dict of ``name`` to gpf's ``features.*``/``head.*`` keys."""
    if is_timm_name(name):
        return {}
    return dict(_registration(name).torchvision_keys)


def build_imagenet_head(name: str, num_classes: int = IMAGENET_CLASSES) -> nn.Sequential:
    """A fresh ImageNet classifier head for ``name`` (see ``imagenet_classifier``)."""
    if is_timm_name(name):
        raise BackboneError(f"backbone {name!r}: a timm model's ImageNet head is its own; build the classifier "
                            f"with gpf.model.gpf.imagenet_classifier({name!r})")
    return _registration(name).build_imagenet_head(num_classes)


def create_backbone(name: str, weights: str | os.PathLike = "none", *, download: bool = True) -> Backbone:
    """Build backbone ``name`` with ``weights``: ``'none'`` (random init),
    ``'imagenet'`` (torchvision's weights via the torch hub cache; timm's through
    its hub cache) or a path to a state dict (``.safetensors`` too) / gpf
    checkpoint (see :func:`gpf.model.weights.load_backbone_weights`).
    """
    if is_timm_name(name):
        from .arch_timm import create_timm_backbone

        return create_timm_backbone(name, weights, download=download)
    reg = _registration(name)
    features = reg.build_features()
    if not isinstance(features, nn.Sequential):
        raise TypeError(f"backbone {name!r}: builder must return an nn.Sequential, got {type(features).__name__}")
    backbone = Backbone(reg.spec, features)
    layers = dict(backbone.named_modules())
    if reg.spec.default_eb_layer not in layers:
        raise BackboneError(f"backbone {name!r}: default_eb_layer {reg.spec.default_eb_layer!r} is not a module; "
                         f"choose one of {', '.join(n for n in layers if n.startswith('features.'))}")
    if weights not in (None, "none"):
        from .weights import load_backbone_weights

        load_backbone_weights(backbone, weights, download=download)
    return backbone


def _register_builtins() -> None:
    register_backbone(
        "vgg16", arch_vgg.vgg16_features, channels=arch_vgg.VGG16_CHANNELS, stride=32, min_input=32,
        default_eb_layer="features.pool3", gif_hidden=256, imagenet_head=arch_vgg.vgg16_imagenet_head,
        torchvision_weights="VGG16_Weights.IMAGENET1K_V1", torchvision_keys=arch_vgg.vgg16_torchvision_keys(),
        description="VGG16 conv1_1..pool5 (paper's main backbone)")
    register_backbone(
        "alexnet", arch_alexnet.alexnet_features, channels=arch_alexnet.ALEXNET_CHANNELS, stride=32,
        min_input=63, default_eb_layer="features.relu2", gif_hidden=128,
        imagenet_head=arch_alexnet.alexnet_imagenet_head, torchvision_weights="AlexNet_Weights.IMAGENET1K_V1",
        torchvision_keys=arch_alexnet.alexnet_torchvision_keys(), description="AlexNet conv1..pool5")
    register_backbone(
        "resnet18", arch_resnet.resnet18_features, channels=arch_resnet.RESNET18_CHANNELS, stride=32,
        min_input=32, default_eb_layer="features.layer2", gif_hidden=64,
        imagenet_head=arch_resnet.resnet_imagenet_head(arch_resnet.RESNET18_CHANNELS),
        torchvision_weights="ResNet18_Weights.IMAGENET1K_V1", torchvision_keys=arch_resnet.resnet_torchvision_keys(),
        description='ResNet-18 conv1..layer4 (the paper\'s "ResNet-16")')
    register_backbone(
        "inception_v3", arch_inception.inception_v3_features, channels=arch_inception.INCEPTION_V3_CHANNELS,
        stride=32, min_input=75, default_eb_layer="features.Mixed_5d", gif_hidden=512,
        mean=arch_inception.INCEPTION_MEAN, std=arch_inception.INCEPTION_STD,
        imagenet_head=arch_inception.inception_v3_imagenet_head,
        torchvision_weights="Inception_V3_Weights.IMAGENET1K_V1",
        torchvision_keys=arch_inception.inception_v3_torchvision_keys(),
        description="Inception-v3 Conv2d_1a_3x3..Mixed_7c")
    register_backbone(   # not in the paper; W1 = 512 for C = 2048, as Table II gives InceptionNet
        "resnet50", arch_resnet.resnet50_features, channels=arch_resnet.RESNET50_CHANNELS, stride=32,
        min_input=32, default_eb_layer="features.layer2", gif_hidden=512,
        imagenet_head=arch_resnet.resnet_imagenet_head(arch_resnet.RESNET50_CHANNELS),
        torchvision_weights="ResNet50_Weights.IMAGENET1K_V1", torchvision_keys=arch_resnet.resnet_torchvision_keys(),
        description="ResNet-50 conv1..layer4 (Bottleneck blocks)")
    register_backbone(
        "tiny", arch_small.tiny_features, channels=arch_small.TINY_CHANNELS, stride=8, min_input=8,
        default_eb_layer="features.pool2", gif_hidden=16, description="3 x conv/bn/relu/pool, for tests")
    register_backbone(
        "small", arch_small.small_features, channels=arch_small.SMALL_CHANNELS, stride=8, min_input=8,
        default_eb_layer="features.layer1", gif_hidden=8,
        description="ResNet-like stem + BasicBlock/Bottleneck, for tests")
    register_backbone(
        "tiny_inception", arch_small.tiny_inception_features, channels=arch_small.TINY_INCEPTION_CHANNELS,
        stride=8, min_input=15, default_eb_layer="features.Mixed_5b", gif_hidden=60,
        mean=arch_inception.INCEPTION_MEAN, std=arch_inception.INCEPTION_STD,
        description="Inception stem + one InceptionA, for tests")


_register_builtins()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m gpf.model.backbones``: the table of ``gpf models``."""
    from .gpf import describe_backbones, format_backbone_table

    print(format_backbone_table(describe_backbones()))


if __name__ == "__main__":  # pragma: no cover
    main()
