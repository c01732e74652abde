"""GPF-CNN (paper, section III and Table II) and the baselines of Table I.

* :class:`PeripheralNet`: the stage-1 peripheral subnet, a backbone plus a
  small classifier head (high / low quality, trained with softmax loss).
  Excitation Backprop runs on it.
* :func:`imagenet_classifier`: the torchvision ImageNet classifier in the same
  ``features`` + ``head`` shape, for attention without a stage-1 model.
* :class:`GPFNet`: the stage-2 model in four variants (Table I):

  ========  =======================================================  ==========
  variant   columns                                                   fusion
  ========  =======================================================  ==========
  single    peripheral view only ("VGG16" row)                        none
  random    peripheral view + a random crop ("Random-VGG16")          concat
  pf        peripheral view + the attention crop ("PF-CNN")           concat
  gpf       peripheral view + the attention crop ("GPF-CNN")          GIF gates
  ========  =======================================================  ==========

  Every variant has the same head: per column Linear(C, 2048) + ReLU (F_c of
  Eq. 8), concatenation, Linear(., 4096) + ReLU (the "FC" row of Table II),
  Linear(4096, N) logits; softmax is applied by the loss or
  :meth:`GPFNet.predict_distribution`.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import GPFError, OptionError
from ..vocabulary import DEFAULT_VARIANT, VARIANT_NAMES, get_variant
from ..vocabulary import VARIANTS as VARIANT_TABLE
from .backbones import (Backbone, BackboneSpec, build_imagenet_head, create_backbone,
                                 get_spec, list_backbones)

VARIANTS = VARIANT_NAMES
VARIANT_DESCRIPTIONS = {name: v.description for name, v in VARIANT_TABLE.items()}
FOVEA_SOURCE = {name: {"fovea": "attention", "random": "random", None: None}[v.second_view]
                for name, v in VARIANT_TABLE.items()}
BRANCH_WIDTH = 2048  # F^i_c of Table II
FUSION_WIDTH = 4096  # FC of Table II
MODEL_KINDS = ("peripheral", "imagenet_classifier", "gpf")


class ModelError(GPFError, ValueError):
    """A model that cannot be built or used as described: a model config (e.g. a damaged checkpoint's),
    stage-1 weights of another backbone, views smaller than the backbone takes."""

# ----------------------------------------------------------------------------- helpers

def global_average_pool(feature_map: torch.Tensor) -> torch.Tensor:
    """F_sq of Eq. 5: ``[B, C, h, w] -> [B, C]`` mean over the spatial positions."""
    return feature_map.mean(dim=(2, 3))


def forward_bucketed(fn: Callable[[torch.Tensor], torch.Tensor], images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``fn`` over a list of ``[3, H_i, W_i]`` images of mixed shapes, without padding.

    Images of equal shape are stacked and run together; the outputs come back
    in input order, so the result equals running each image on its own.
    """
    if len(images) == 0:
        raise ValueError("empty list of images")
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    results = [fn(torch.stack([images[i] for i in indices])) for indices in groups.values()]
    order = torch.tensor([i for indices in groups.values() for i in indices], device=results[0].device)
    return torch.cat(results)[torch.argsort(order)]


def check_images(images, spec: BackboneSpec, what: str) -> None:
    """Refuse input the backbone cannot take, naming the argument and the fix."""
    tensors = list(images) if isinstance(images, (list, tuple)) else [images]
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{what}: expected tensors, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"{what}: got {tensor.dtype} images; normalise them first with "
                            f"model.normalize(images) (uint8 -> float, {spec.name} mean/std)")
        expected_dims = 3 if isinstance(images, (list, tuple)) else 4
        if tensor.dim() != expected_dims or tensor.shape[-3] != 3:
            layout = "a list of [3, H, W]" if expected_dims == 3 else "[B, 3, H, W]"
            raise ValueError(f"{what}: expected {layout} images, got shape {list(tensor.shape)}")
        height, width = tensor.shape[-2:]
        if min(height, width) < spec.min_input:
            raise ModelError(f"{what}: a {width}x{height} view is smaller than {spec.name}'s minimum input "
                             f"side {spec.min_input}; fit the uint8 views to it before normalising, with "
                             f"gpf.model.geometry.fit_to_backbone(views, model.spec)")


def _as_backbone(backbone: str | Backbone, weights: str, download: bool = True) -> Backbone:
    if isinstance(backbone, Backbone):
        if weights not in (None, "none"):
            raise OptionError(f"weights={weights!r} applies only when the backbone is given by name; "
                              f"pass create_backbone({backbone.name!r}, weights) or the name {backbone.name!r}",
                              param="weights")
        return backbone
    if isinstance(backbone, str):
        return create_backbone(backbone, weights, download=download)
    raise TypeError(f"backbone must be a registered name ({', '.join(list_backbones())}) "
                    f"or a Backbone, got {type(backbone).__name__}")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------- stage 1

class Classifier(nn.Module):
    """``forward(x) = head(features(x))``: the shape every attention model has.

    ``features`` is the backbone's ``nn.Sequential``; ``head`` an
    ``nn.Sequential`` of AdaptiveAvgPool2d / Flatten / Linear / ReLU / Dropout.
    """

    kind = "imagenet_classifier"

    def __init__(self, spec: BackboneSpec, features: nn.Sequential, head: nn.Sequential):
        super().__init__()
        self.spec = spec
        self.features = features
        self.head = head

    @property
    def num_classes(self) -> int:
        return [m for m in self.head.modules() if isinstance(m, nn.Linear)][-1].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def normalize(self, images):
        """uint8 (or [0, 1] float) images -> this backbone's normalised input."""
        return self.spec.normalize(images)

    def config(self) -> dict:
        """Plain-type description that :func:`build_model` rebuilds the architecture from."""
        return {"model": self.kind, "backbone": self.spec.name, "num_classes": self.num_classes}


class PeripheralNet(Classifier):
    """Stage-1 peripheral subnet: backbone -> GAP -> Flatten -> [Linear(C, hidden) -> ReLU -> Dropout ->] Linear(., N).

    The paper trains it "with softmax loss to classify the images into high or
    low category" (section IV-B), so ``num_classes`` defaults to 2. Global
    average pooling lets it take views of any aspect ratio. ``hidden=None``
    (default) keeps the head one linear layer on the pooled descriptor.
    """

    kind = "peripheral"

    def __init__(self, backbone: str | Backbone, num_classes: int = 2, hidden: int | None = None,
                 dropout: float = 0.5, *, weights: str = "none"):
        backbone = _as_backbone(backbone, weights)
        _check_positive(num_classes=num_classes)
        if hidden is not None:
            _check_positive(hidden=hidden)
        layers: list[tuple[str, nn.Module]] = [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1))]
        width = backbone.channels
        if hidden:
            layers += [("fc1", nn.Linear(width, hidden)), ("relu1", nn.ReLU(inplace=False)),
                       ("drop1", nn.Dropout(dropout))]
            width = hidden
        layers.append(("fc", nn.Linear(width, num_classes)))
        super().__init__(backbone.spec, backbone.features, nn.Sequential(OrderedDict(layers)))
        self.hidden = hidden
        self.dropout = dropout

    def config(self) -> dict:
        return {**super().config(), "hidden": self.hidden, "dropout": self.dropout}


def imagenet_classifier(name: str, weights: str = "imagenet", *, download: bool = True) -> Classifier:
    """The ImageNet classifier of backbone ``name`` in ``features`` + ``head`` form.

    VGG16: features -> AdaptiveAvgPool2d(7) -> fc6/fc7/fc8; AlexNet likewise with
    6x6; ResNet-18 and Inception-v3: GAP -> fc. ``weights`` is ``'imagenet'``
    (torchvision's weights, features and head), a PATH, or ``'none'``.
    """
    spec = get_spec(name)
    model = Classifier(spec, create_backbone(name).features, build_imagenet_head(name))
    if weights not in (None, "none"):
        from .weights import load_classifier_weights

        load_classifier_weights(model, weights, download=download)
    return model


# ----------------------------------------------------------------------------- stage 2

class GatedInformationFusion(nn.Module):
    """The GIF weight-generation part (Eq. 5-7, Table II).

    ``z`` = concat of the two branches' pooled descriptors (Eq. 5, 2C values);
    two parallel bottlenecks ``F^i_ex(z) = W2 ReLU(W1 z)`` with
    W1: 2C -> ``hidden`` and W2: ``hidden`` -> C (Eq. 6); gates
    ``O_i = sigmoid(F^i_ex(z))`` (Eq. 7) scale each branch channel-wise.
    Because the gates are per channel, gating the map and then pooling equals
    gating the pooled descriptor, so this module works on descriptors.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        _check_positive(channels=channels, hidden=hidden)
        self.excite_peripheral = self._bottleneck(channels, hidden)  # F^1_ex
        self.excite_foveal = self._bottleneck(channels, hidden)      # F^2_ex

    @staticmethod
    def _bottleneck(channels: int, hidden: int) -> nn.Sequential:
        return nn.Sequential(OrderedDict([("reduce", nn.Linear(2 * channels, hidden)),  # W1
                                          ("relu", nn.ReLU(inplace=False)),
                                          ("expand", nn.Linear(hidden, channels))]))    # W2

    def gates(self, peripheral: torch.Tensor, foveal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(O1, O2), each ``[B, C]`` in (0, 1)."""
        z = torch.cat([peripheral, foveal], dim=1)
        return torch.sigmoid(self.excite_peripheral(z)), torch.sigmoid(self.excite_foveal(z))

    def forward(self, peripheral: torch.Tensor, foveal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o1, o2 = self.gates(peripheral, foveal)
        return peripheral * o1, foveal * o2


def _fc_block(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("fc", nn.Linear(in_features, out_features)),
                                      ("relu", nn.ReLU(inplace=False)), ("dropout", nn.Dropout(dropout))]))


class GPFNet(nn.Module):
    """Stage-2 model: peripheral + foveal subnets fused as in Figure 2 / Table II.

    ``backbone`` is a registered name (built with ``weights``) or a
    :class:`Backbone`; the foveal subnet starts as a copy of the same backbone.
    ``branch_width`` (2048) and ``fusion_width`` (4096) are Table II's F_c and
    FC widths, ``gif_hidden`` its W1 (default: the backbone's). ``dropout`` is
    applied after each hidden FC layer (the paper does not say; VGG's FC
    layers use 0.5).
    """

    def __init__(self, backbone: str | Backbone, variant: str = DEFAULT_VARIANT, num_classes: int = 10, *,
                 weights: str = "none", branch_width: int = BRANCH_WIDTH, fusion_width: int = FUSION_WIDTH,
                 gif_hidden: int | None = None, dropout: float = 0.5, download: bool = True):
        super().__init__()
        table = get_variant(variant)
        _check_positive(num_classes=num_classes, branch_width=branch_width, fusion_width=fusion_width)
        if not 0.0 <= dropout < 1.0:
            raise OptionError(f"dropout must be in [0, 1), got {dropout}", param="dropout")
        backbone = _as_backbone(backbone, weights, download)
        self.spec = backbone.spec
        self.variant = variant
        self.num_classes = num_classes
        self.branch_width = branch_width
        self.fusion_width = fusion_width
        self.gif_hidden = gif_hidden or backbone.gif_hidden
        self.dropout = dropout
        self.peripheral_frozen = False
        channels = backbone.channels

        self.peripheral = backbone.features
        self.peripheral_fc = _fc_block(channels, branch_width, dropout)  # F^1_c (Eq. 8)
        self.foveal = self.foveal_fc = self.gif = None
        if table.columns == 2:
            self.foveal = copy.deepcopy(backbone.features)
            self.foveal_fc = _fc_block(channels, branch_width, dropout)  # F^2_c (Eq. 8)
        if table.gated:
            self.gif = GatedInformationFusion(channels, self.gif_hidden)
        self.fusion = _fc_block(table.columns * branch_width, fusion_width, dropout)
        self.classifier = nn.Linear(fusion_width, num_classes)

    # -- inputs ---------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.spec.channels

    @property
    def needs_fovea(self) -> bool:
        return VARIANT_TABLE[self.variant].columns == 2

    @property
    def fovea_source(self) -> str | None:
        """Where the second column's view comes from: ``'attention'``, ``'random'`` or None."""
        return FOVEA_SOURCE[self.variant]

    def normalize(self, images):
        """uint8 (or [0, 1] float) images -> the backbone's normalised input."""
        return self.spec.normalize(images)

    @property
    def peripheral_spec(self) -> BackboneSpec:
        """The spec of the network that sees the peripheral view (``gpf.model.geometry.fit_to_backbone`` fits
        views to its ``min_input``)."""
        return self.spec

    @property
    def foveal_spec(self) -> BackboneSpec:
        """The spec of the network that sees the second view (foveal or random crop)."""
        return self.spec

    def peripheral_descriptor(self, periph) -> torch.Tensor:
        """Pooled peripheral features ``[B, C]`` of a ``[B, 3, H, W]`` batch or a list of ``[3, H_i, W_i]``.

        A list of mixed shapes is run shape by shape (no padding). A frozen
        peripheral subnet runs without autograd.
        """
        check_images(periph, self.spec, "periph")

        def pooled(batch: torch.Tensor) -> torch.Tensor:
            return global_average_pool(self.peripheral(batch))

        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.peripheral_frozen):
            if isinstance(periph, (list, tuple)):
                return forward_bucketed(pooled, periph)
            return pooled(periph)

    def foveal_descriptor(self, fovea: torch.Tensor) -> torch.Tensor:
        """Pooled foveal features ``[B, C]`` of the ``[B, 3, S, S]`` crops."""
        if self.foveal is None:
            raise ValueError("variant 'single' has no foveal subnet")
        check_images(fovea, self.spec, "fovea")
        return global_average_pool(self.foveal(fovea))

    def _peripheral_input(self, periph, periph_feat) -> torch.Tensor:
        if periph_feat is None:
            if periph is None:
                raise ValueError("give the peripheral view ('periph') or its pooled descriptor ('periph_feat')")
            return self.peripheral_descriptor(periph)
        if periph_feat.dim() != 2 or periph_feat.shape[1] != self.channels:
            raise ValueError(f"periph_feat must be [B, {self.channels}] (the pooled {self.spec.name} descriptor), "
                             f"got {list(periph_feat.shape)}")
        return periph_feat.to(self.classifier.weight.dtype)

    # -- forward --------------------------------------------------------------
    def forward(self, periph=None, fovea: torch.Tensor | None = None,
                periph_feat: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, N]``.

        ``periph``: float ``[B, 3, H, W]`` or a list of ``[3, H_i, W_i]``;
        ``fovea``: float ``[B, 3, S, S]`` (not for ``single``); ``periph_feat``:
        optional precomputed ``[B, C]`` peripheral descriptor (then ``periph``
        is not run).
        """
        p = self._peripheral_input(periph, periph_feat)
        if not self.needs_fovea:
            if fovea is not None:
                raise ValueError("variant 'single' takes no foveal view; pass fovea=None")
            return self.classifier(self.fusion(self.peripheral_fc(p)))
        if fovea is None:
            raise ValueError(f"variant {self.variant!r} needs the foveal view: fovea=[B, 3, S, S] "
                             f"({self.fovea_source} crops)")
        f = self.foveal_descriptor(fovea)
        if f.shape[0] != p.shape[0]:
            raise ValueError(f"batch sizes differ: {p.shape[0]} peripheral views, {f.shape[0]} foveal views")
        if self.gif is not None:
            p, f = self.gif(p, f)
        joint = torch.cat([self.peripheral_fc(p), self.foveal_fc(f)], dim=1)
        return self.classifier(self.fusion(joint))

    def predict_distribution(self, periph=None, fovea=None, periph_feat=None) -> torch.Tensor:
        """Softmax over the N score buckets, ``[B, N]``."""
        return torch.softmax(self(periph, fovea, periph_feat), dim=1)

    # -- stage-2 training --------------------------------------------------------
    def freeze_peripheral(self) -> "GPFNet":
        """Freeze the peripheral conv layers (paper, IV-B): no gradients, BN kept in eval mode."""
        for parameter in self.peripheral.parameters():
            parameter.requires_grad_(False)
        self.peripheral_frozen = True
        self.peripheral.eval()
        return self

    def unfreeze_peripheral(self) -> "GPFNet":
        for parameter in self.peripheral.parameters():
            parameter.requires_grad_(True)
        self.peripheral_frozen = False
        self.peripheral.train(self.training)
        return self

    def train(self, mode: bool = True) -> "GPFNet":
        super().train(mode)
        if self.peripheral_frozen:
            self.peripheral.eval()
        return self

    def load_peripheral_from_stage1(self, state) -> None:
        """Copy a stage-1 model's features into the peripheral subnet.

        ``state``: a stage-1 :class:`~gpf.model.checkpoint.Checkpoint`, or a
        ``PeripheralNet`` / ``Backbone`` state dict (``features.*`` keys; head
        keys are ignored).
        """
        from .checkpoint import Checkpoint
        from .weights import load_state_into, unwrap_state_dict

        trained_on = None
        if isinstance(state, Checkpoint):
            trained_on, state = state.model_config.get("backbone"), state.state_dict
        if trained_on and trained_on != self.spec.name:
            raise ModelError(f"the stage-1 model uses backbone {trained_on!r} but this GPFNet uses "
                             f"{self.spec.name!r}; train stage 2 with --backbone {trained_on}")
        holder = nn.Module()
        holder.features = self.peripheral
        load_state_into(holder, unwrap_state_dict(state, "stage-1 state"), source="stage-1 state",
                        ignore_prefixes=("head.",))

    def config(self) -> dict:
        """Plain-type description that :func:`build_model` rebuilds the architecture from."""
        return {"model": "gpf", "backbone": self.spec.name, "variant": self.variant,
                "num_classes": self.num_classes, "branch_width": self.branch_width,
                "fusion_width": self.fusion_width, "gif_hidden": self.gif_hidden, "dropout": self.dropout,
                "peripheral_frozen": self.peripheral_frozen}


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise OptionError(f"{name} must be a positive int, got {value!r}", param=name)


# ----------------------------------------------------------------------------- rebuilding

_DAMAGED_CONFIG = "; the checkpoint is damaged or was written by another gpf version"
_REQUIRED = object()


def _config_value(config: Mapping, key: str, convert: Callable, default=_REQUIRED):
    """``convert(config[key])`` (``default`` when absent); :class:`ModelError` naming the key otherwise."""
    value = config.get(key, default)
    if value is _REQUIRED:
        raise ModelError(f"model_config lacks {key!r}{_DAMAGED_CONFIG}")
    try:
        return convert(value)
    except (TypeError, ValueError):
        what = {int: "whole number", float: "number"}.get(convert, convert.__name__)
        raise ModelError(f"model_config[{key!r}] is {value!r}, not a {what}{_DAMAGED_CONFIG}") from None


def build_model(config: Mapping) -> nn.Module:
    """Randomly initialised model of ``config`` (from ``model.config()``; extra keys ignored)."""
    kind = config.get("model")
    if kind not in MODEL_KINDS:
        raise ModelError(f"model_config['model'] is {kind!r}; expected one of {', '.join(MODEL_KINDS)}"
                         f"{_DAMAGED_CONFIG}")
    name = config.get("backbone")
    if kind == "imagenet_classifier":
        return imagenet_classifier(name, weights="none")
    if kind == "peripheral":
        return PeripheralNet(name, num_classes=_config_value(config, "num_classes", int, 2),
                             hidden=config.get("hidden"), dropout=_config_value(config, "dropout", float, 0.5))
    model = GPFNet(name, config.get("variant", DEFAULT_VARIANT), _config_value(config, "num_classes", int),
                   branch_width=_config_value(config, "branch_width", int, BRANCH_WIDTH),
                   fusion_width=_config_value(config, "fusion_width", int, FUSION_WIDTH),
                   gif_hidden=config.get("gif_hidden"), dropout=_config_value(config, "dropout", float, 0.5))
    if config.get("peripheral_frozen"):
        model.freeze_peripheral()
    return model


# ----------------------------------------------------------------------------- summary

def describe_backbones(num_classes: int = 10, names: Sequence[str] | None = None) -> list[dict]:
    """One row per backbone: its spec, GIF sizes and parameter counts of every variant.

    Models are built on the ``meta`` device, so this allocates no weights.
    """
    rows = []
    for name in names or list_backbones():
        spec = get_spec(name)
        with torch.device("meta"):
            counts = {variant: count_parameters(GPFNet(name, variant, num_classes)) for variant in VARIANTS}
            backbone_params = count_parameters(create_backbone(name))
            stage1_params = count_parameters(PeripheralNet(name))
        rows.append({"backbone": name, "channels": spec.channels, "stride": spec.stride,
                     "min_input": spec.min_input, "eb_layer": spec.default_eb_layer,
                     "gif": [spec.gif_hidden, spec.channels], "backbone_params": backbone_params,
                     "stage1_params": stage1_params, "params": counts,
                     "imagenet": spec.torchvision_weights is not None})
    return rows


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def format_backbone_table(rows: Sequence[dict], num_classes: int = 10) -> str:
    """A fixed-width text table of :func:`describe_backbones` rows."""
    header = ["backbone", "C", "stride", "min in", "EB layer", "GIF [W1,C]", "backbone", "stage 1",
              *[f"{v} (N={num_classes})" for v in VARIANTS], "ImageNet"]
    body = [[r["backbone"], str(r["channels"]), str(r["stride"]), str(r["min_input"]), r["eb_layer"],
             f"[{r['gif'][0]},{r['gif'][1]}]", _millions(r["backbone_params"]), _millions(r["stage1_params"]),
             *[_millions(r["params"][v]) for v in VARIANTS], "yes" if r["imagenet"] else "no"] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line).rstrip() for line in [header, *body])
