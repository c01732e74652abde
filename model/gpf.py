"""GPF-CNN (paper, section III and Table II) and the baselines of Table I.

* :class:`PeripheralNet`: the stage-1 peripheral subnet, a backbone plus a
  small classifier head (high / low quality, trained with softmax loss).
  Excitation Backprop runs on it.
* :func:`imagenet_classifier`: the torchvision (or timm) ImageNet classifier in
  the same ``features`` + ``head`` shape, for attention without a stage-1 model.
* :class:`GPFNet`: the stage-2 model in the variants of Table I
  (:data:`gpf.vocabulary.VARIANTS`; the architecture depends only on the
  columns and the fusion, what each column sees and trains is the trainer's):

  =============  ==========================================================  ==========
  variant        columns                                                      fusion
  =============  ==========================================================  ==========
  single         warped photo, fine-tuned ("VGG16" row as the paper ran it)   none
  single-periph  peripheral view, fine-tuned                                  none
  single-frozen  frozen stage-1 peripheral view                               none
  random         warped photo + a fresh original-resolution patch              concat
  random-frozen  frozen peripheral view + a stored random crop                concat
  pf             peripheral view + the attention crop ("PF-CNN")              concat
  gpf            peripheral view + the attention crop ("GPF-CNN")             GIF gates
  =============  ==========================================================  ==========

  Every variant has the same head: per column Linear(C, 2048) + ReLU (F_c of
  Eq. 8), concatenation, Linear(., 4096) + ReLU (the "FC" row of Table II),
  Linear(4096, N) logits; softmax is applied by the loss or
  :meth:`GPFNet.predict_distribution`. The two subnets may be different
  backbones (registered or ``timm:NAME``), each with its own C, normalisation
  and GIF bottleneck width.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import GPFError, OptionError
from ..vocabulary import DEFAULT_VARIANT, LEGACY_VARIANT_NAMES, VARIANT_NAMES, get_variant
from ..vocabulary import VARIANTS as VARIANT_TABLE
from .attention import check_eb_supported
from .backbones import (Backbone, BackboneSpec, build_imagenet_head, create_backbone, get_spec, is_timm_name,
                        list_backbones, pooled_descriptor, record_differences)

VARIANTS = VARIANT_NAMES
VARIANT_DESCRIPTIONS = {name: v.description for name, v in VARIANT_TABLE.items()}
FOVEA_SOURCE = {name: {"fovea": "attention", "random": "random", "patch": "patch", None: None}[v.second_view]
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
    raise TypeError(f"backbone must be a registered name ({', '.join(list_backbones())}), timm:NAME "
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
    low category" (section IV-B), so ``num_classes`` defaults to 2. A backbone
    Excitation Backprop cannot walk is refused here (``EBUnsupportedError`` naming
    the first module it cannot pass and why), not when preprocessing meets it. Global
    average pooling lets it take views of any aspect ratio. ``hidden=None``
    (default) keeps the head one linear layer on the pooled descriptor.

    A timm backbone (``timm:NAME``, a ResNet or RegNetX) is walked as
    :func:`stage1_features` says; its weights (``'imagenet'``, PATH) load as for a
    stage-2 column, after the family is checked on the ``meta`` device.
    """

    kind = "peripheral"

    def __init__(self, backbone: str | Backbone, num_classes: int = 2, hidden: int | None = None,
                 dropout: float = 0.5, *, weights: str = "none"):
        if is_timm_name(backbone) and weights not in (None, "none"):
            check_peripheral_backbone(backbone)   # refuse a family EB cannot walk before timm fetches weights
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
        super().__init__(backbone.spec, stage1_features(backbone), nn.Sequential(OrderedDict(layers)))
        self.hidden = hidden
        self.dropout = dropout
        check_eb_supported(self)   # EB reads the attention from this network: refuse one it cannot walk now

    def config(self) -> dict:
        return {**super().config(), "hidden": self.hidden, "dropout": self.dropout}


def stage1_features(backbone: Backbone) -> nn.Sequential:
    """The trunk of a stage-1 network: a registered backbone's ``features``; for ``timm:NAME`` the timm
    model's modules in the ``features`` form EB walks (:func:`~gpf.model.eb_timm.eb_walkable_timm`:
    shared, keys timm's with a ``features.`` prefix, so a stage-2 column of the same name loads them as
    they are; the classifier left out). Another timm family raises ``EBUnsupportedError`` naming the
    first module EB cannot pass and why."""
    if not backbone.spec.is_timm:
        return backbone.features
    from .eb_timm import eb_walkable_timm

    return eb_walkable_timm(backbone.features)[0]


def check_peripheral_backbone(name: str) -> None:
    """Refuse, before anything is built for real, a backbone EB cannot walk (registered or timm:NAME).

    The stage-1 network is built on the ``meta`` device (no weights, no download)
    and checked as :class:`PeripheralNet` checks it; the ``EBUnsupportedError``
    then also lists the registered backbones that do work.
    """
    from .attention import EBUnsupportedError

    try:
        with torch.device("meta"):
            PeripheralNet(name)
    except EBUnsupportedError as err:
        raise EBUnsupportedError(f"{err} Backbones Excitation Backprop walks: "
                                 f"{', '.join(eb_walkable_backbones())}; and timm's ResNet and RegNetX as "
                                 "timm:NAME (`gpf models --timm resnet` shows their EB layer).") from None


def eb_walkable_backbones() -> list[str]:
    """The registered backbones a stage-1 model (:class:`PeripheralNet`) can be built on (timm's ResNet
    and RegNetX too, as ``timm:NAME``: see :func:`stage1_features`)."""
    from .attention import EBUnsupportedError

    names = []
    for name in list_backbones():
        try:
            with torch.device("meta"):
                PeripheralNet(name)
        except EBUnsupportedError:
            continue
        names.append(name)
    return names


def imagenet_classifier(name: str, weights: str = "imagenet", *, download: bool = True) -> Classifier:
    """The ImageNet classifier of backbone ``name`` in ``features`` + ``head`` form.

    VGG16: features -> AdaptiveAvgPool2d(7) -> fc6/fc7/fc8; AlexNet likewise with
    6x6; ResNet-18 and Inception-v3: GAP -> fc. ``weights`` is ``'imagenet'``
    (torchvision's weights, features and head), a PATH, or ``'none'``.
    ``timm:NAME`` (a ResNet or RegNetX): timm's classifier with its ``fc``
    (:func:`~gpf.model.arch_timm.create_timm_classifier`), walked as
    :func:`stage1_features` says; the head is its global pool, flatten, fc.
    """
    if is_timm_name(name):
        return _timm_imagenet_classifier(name, weights, download)
    spec = get_spec(name)
    model = Classifier(spec, create_backbone(name).features, build_imagenet_head(name))
    if weights not in (None, "none"):
        from .weights import load_classifier_weights

        load_classifier_weights(model, weights, download=download)
    return model


def _timm_imagenet_classifier(name: str, weights: str, download: bool) -> Classifier:
    from .arch_timm import create_timm_classifier
    from .eb_timm import eb_walkable_timm

    check_peripheral_backbone(name)    # refuse a family EB cannot walk before timm fetches weights
    features, head = eb_walkable_timm(create_timm_classifier(name, weights, download=download))
    return Classifier(get_spec(name), features, head)


# ----------------------------------------------------------------------------- stage 2

class GatedInformationFusion(nn.Module):
    """The GIF weight-generation part (Eq. 5-7, Table II), for two branches that may differ in width.

    ``z`` = concat of the two branches' pooled descriptors (Eq. 5, C_p + C_f
    values; 2C when both subnets are the same backbone); two parallel
    bottlenecks ``F^i_ex(z) = W2 ReLU(W1 z)``, each sized from its own branch:
    W1: C_p + C_f -> W1_i and W2: W1_i -> C_i (Eq. 6); gates
    ``O_i = sigmoid(F^i_ex(z))`` (Eq. 7) scale each branch channel-wise.
    Because the gates are per channel, gating the map and then pooling equals
    gating the pooled descriptor, so this module works on descriptors.

    ``channels`` and ``hidden``: one int for both branches (the paper's case) or
    a pair (peripheral, foveal).
    """

    def __init__(self, channels: int | Sequence[int], hidden: int | Sequence[int]):
        super().__init__()
        (c_p, c_f), (h_p, h_f) = _pair("channels", channels), _pair("hidden", hidden)
        self.excite_peripheral = self._bottleneck(c_p + c_f, h_p, c_p)  # F^1_ex
        self.excite_foveal = self._bottleneck(c_p + c_f, h_f, c_f)      # F^2_ex

    @staticmethod
    def _bottleneck(joint: int, hidden: int, channels: int) -> nn.Sequential:
        return nn.Sequential(OrderedDict([("reduce", nn.Linear(joint, hidden)),     # W1
                                          ("relu", nn.ReLU(inplace=False)),
                                          ("expand", nn.Linear(hidden, channels))]))  # W2

    def gates(self, peripheral: torch.Tensor, foveal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(O1, O2): ``[B, C_p]`` and ``[B, C_f]``, in (0, 1)."""
        z = torch.cat([peripheral, foveal], dim=1)
        return torch.sigmoid(self.excite_peripheral(z)), torch.sigmoid(self.excite_foveal(z))

    def forward(self, peripheral: torch.Tensor, foveal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o1, o2 = self.gates(peripheral, foveal)
        return peripheral * o1, foveal * o2


def _pair(name: str, value) -> tuple[int, int]:
    """``(v, v)`` of an int, a 2-sequence as it is; positive ints only."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else \
        tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise OptionError(f"{name} must be a positive int or a (peripheral, foveal) pair of them, got {value!r}",
                          param=name)
    return pair[0], pair[1]


def _fc_block(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("fc", nn.Linear(in_features, out_features)),
                                      ("relu", nn.ReLU(inplace=False)), ("dropout", nn.Dropout(dropout))]))


def _name_of(backbone: str | Backbone):
    return backbone.name if isinstance(backbone, Backbone) else backbone


def _columns(backbone, peripheral_backbone, weights, peripheral_weights, columns: int,
             download: bool) -> tuple[Backbone, Backbone | None]:
    """(peripheral, foveal or None) subnets of a GPFNet (see its doc)."""
    if columns == 1:
        if peripheral_backbone is not None and _name_of(peripheral_backbone) != _name_of(backbone):
            raise OptionError(f"variant 'single' has one column, the backbone {_name_of(backbone)!r}; "
                              f"peripheral_backbone={_name_of(peripheral_backbone)} does not apply",
                              param="peripheral_backbone")
        return _as_backbone(backbone, weights if peripheral_weights is None else peripheral_weights, download), None
    same = peripheral_backbone is None or (isinstance(peripheral_backbone, str)
                                            and peripheral_backbone == _name_of(backbone))
    if same and peripheral_weights in (None, weights):
        foveal = _as_backbone(backbone, weights, download)
        peripheral = Backbone(foveal.spec, copy.deepcopy(foveal.features))
        return peripheral, foveal
    if same and isinstance(backbone, Backbone):
        raise OptionError("peripheral_weights apply only when the backbone is given by name", param="peripheral_weights")
    peripheral = _as_backbone(_name_of(backbone) if peripheral_backbone is None else peripheral_backbone,
                              weights if peripheral_weights is None else peripheral_weights, download)
    return peripheral, _as_backbone(backbone, weights, download)


class GPFNet(nn.Module):
    """Stage-2 model: peripheral + foveal subnets fused as in Figure 2 / Table II.

    ``backbone`` names the foveal subnet (for ``single``, which has one column,
    the column itself): a registered name or ``timm:NAME`` (built with
    ``weights``) or a :class:`Backbone`. ``peripheral_backbone`` names the
    peripheral subnet (default: the same backbone; in stage 2 the stage-1
    network's), built with ``peripheral_weights`` (default: ``weights``); when
    both are the same backbone with the same weights the foveal subnet starts as
    a copy of the peripheral. ``branch_width`` (2048) and ``fusion_width``
    (4096) are Table II's F_c and FC widths; ``gif_hidden`` its W1, an int for
    both branches or a (peripheral, foveal) pair (default: each subnet's own,
    Table II for the paper's backbones). ``dropout`` is applied after each
    hidden FC layer (the paper does not say; VGG's FC layers use 0.5).
    """

    def __init__(self, backbone: str | Backbone, variant: str = DEFAULT_VARIANT, num_classes: int = 10, *,
                 weights: str = "none", peripheral_backbone: str | Backbone | None = None,
                 peripheral_weights: str | None = None, branch_width: int = BRANCH_WIDTH,
                 fusion_width: int = FUSION_WIDTH, gif_hidden: int | Sequence[int] | None = None,
                 dropout: float = 0.5, download: bool = True):
        super().__init__()
        table = get_variant(variant)
        _check_positive(num_classes=num_classes, branch_width=branch_width, fusion_width=fusion_width)
        if not 0.0 <= dropout < 1.0:
            raise OptionError(f"dropout must be in [0, 1), got {dropout}", param="dropout")
        peripheral, foveal = _columns(backbone, peripheral_backbone, weights, peripheral_weights, table.columns,
                                      download)
        self.peripheral_spec = peripheral.spec
        self.foveal_spec = foveal.spec if foveal is not None else None
        self.variant = variant
        self.num_classes = num_classes
        self.branch_width = branch_width
        self.fusion_width = fusion_width
        self.dropout = dropout
        self.peripheral_frozen = False
        self.gif_hidden = None
        if foveal is not None:
            self.gif_hidden = _pair("gif_hidden", gif_hidden if gif_hidden is not None
                                    else (peripheral.gif_hidden, foveal.gif_hidden))

        self.peripheral = peripheral.features
        self.peripheral_fc = _fc_block(peripheral.channels, branch_width, dropout)  # F^1_c (Eq. 8)
        self.foveal = self.foveal_fc = self.gif = None
        if foveal is not None:
            self.foveal = foveal.features
            self.foveal_fc = _fc_block(foveal.channels, branch_width, dropout)  # F^2_c (Eq. 8)
        if table.gated:
            self.gif = GatedInformationFusion((peripheral.channels, foveal.channels), self.gif_hidden)
        self.fusion = _fc_block(table.columns * branch_width, fusion_width, dropout)
        self.classifier = nn.Linear(fusion_width, num_classes)

    # -- inputs ---------------------------------------------------------------
    @property
    def spec(self) -> BackboneSpec:
        """The spec of the backbone named ``backbone``: the foveal subnet's (``single``: the column's)."""
        return self.foveal_spec or self.peripheral_spec

    @property
    def channels(self) -> int:
        """C of the peripheral subnet (the width of ``periph_feat``)."""
        return self.peripheral_spec.channels

    @property
    def needs_fovea(self) -> bool:
        return VARIANT_TABLE[self.variant].columns == 2

    @property
    def fovea_source(self) -> str | None:
        """Where the second column's view comes from: ``'attention'`` (the tau crop), ``'random'`` (a
        stored random crop), ``'patch'`` (a patch of the original-resolution photo) or None."""
        return FOVEA_SOURCE[self.variant]

    @property
    def first_view(self) -> str:
        """What the first column sees: ``'periph'`` (aspect kept) or ``'warp'`` (the photo warped square)."""
        return VARIANT_TABLE[self.variant].first_view

    def normalize_peripheral(self, images):
        """uint8 (or [0, 1] float) images -> the peripheral subnet's normalised input (its mean/std)."""
        return self.peripheral_spec.normalize(images)

    def normalize_foveal(self, images):
        """uint8 (or [0, 1] float) images -> the foveal subnet's normalised input (its mean/std)."""
        if self.foveal_spec is None:
            raise ValueError(f"variant {self.variant!r} has no foveal subnet")
        return self.foveal_spec.normalize(images)

    def normalize(self, images):
        """uint8 (or [0, 1] float) images -> normalised input, when both subnets normalise alike.

        Subnets with different mean/std (e.g. a timm ViT beside VGG16) need
        :meth:`normalize_peripheral` and :meth:`normalize_foveal`.
        """
        other = self.foveal_spec
        if other is not None and (other.mean, other.std) != (self.peripheral_spec.mean, self.peripheral_spec.std):
            raise ModelError(f"the subnets normalise differently ({self.peripheral_spec.name} and {other.name}): "
                             "use model.normalize_peripheral(periph) and model.normalize_foveal(fovea)")
        return self.peripheral_spec.normalize(images)

    def peripheral_descriptor(self, periph) -> torch.Tensor:
        """Pooled peripheral features ``[B, C_p]`` of a ``[B, 3, H, W]`` batch or a list of ``[3, H_i, W_i]``.

        A list of mixed shapes is run shape by shape (no padding). A frozen
        peripheral subnet runs without autograd.
        """
        spec = self.peripheral_spec
        check_images(periph, spec, "periph")

        def pooled(batch: torch.Tensor) -> torch.Tensor:
            return pooled_descriptor(spec, self.peripheral, batch)

        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.peripheral_frozen):
            if isinstance(periph, (list, tuple)):
                return forward_bucketed(pooled, periph)
            return pooled(periph)

    def foveal_descriptor(self, fovea: torch.Tensor) -> torch.Tensor:
        """Pooled foveal features ``[B, C_f]`` of the ``[B, 3, S, S]`` crops."""
        if self.foveal is None:
            raise ValueError(f"variant {self.variant!r} has no foveal subnet")
        check_images(fovea, self.foveal_spec, "fovea")
        return pooled_descriptor(self.foveal_spec, self.foveal, fovea)

    def _peripheral_input(self, periph, periph_feat) -> torch.Tensor:
        if periph_feat is None:
            if periph is None:
                raise ValueError("give the peripheral view ('periph') or its pooled descriptor ('periph_feat')")
            return self.peripheral_descriptor(periph)
        if periph_feat.dim() != 2 or periph_feat.shape[1] != self.channels:
            raise ValueError(f"periph_feat must be [B, {self.channels}] (the pooled {self.peripheral_spec.name} "
                             f"descriptor), got {list(periph_feat.shape)}")
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
                raise ValueError(f"variant {self.variant!r} takes no foveal view; pass fovea=None")
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
        mine = self.peripheral_spec.name
        if trained_on and trained_on != mine:
            raise ModelError(f"the stage-1 model uses backbone {trained_on!r} but this GPFNet's peripheral subnet "
                             f"is {mine!r}; train stage 2 with --peripheral-backbone {trained_on} (its default)")
        holder = nn.Module()
        holder.features = self.peripheral
        load_state_into(holder, unwrap_state_dict(state, "stage-1 state"), source="stage-1 state",
                        ignore_prefixes=("head.",))

    def config(self) -> dict:
        """Plain-type description that :func:`build_model` rebuilds the architecture from.

        ``backbone`` is the foveal subnet (``single``: the column), ``peripheral_backbone``
        the peripheral one; ``gif_hidden`` the [peripheral, foveal] W1 pair (None for
        ``single``); ``subnets`` what each subnet was (C, mean/std, timm version),
        checked when the model is rebuilt.
        """
        subnets = {"peripheral": self.peripheral_spec.record()}
        if self.foveal_spec is not None:
            subnets["foveal"] = self.foveal_spec.record()
        return {"model": "gpf", "backbone": self.spec.name, "peripheral_backbone": self.peripheral_spec.name,
                "variant": self.variant, "num_classes": self.num_classes, "branch_width": self.branch_width,
                "fusion_width": self.fusion_width,
                "gif_hidden": None if self.gif_hidden is None else list(self.gif_hidden), "dropout": self.dropout,
                "peripheral_frozen": self.peripheral_frozen, "subnets": subnets, "first_view": self.first_view}

    def check_subnets(self, recorded: Mapping | None, source: str = "the checkpoint") -> None:
        """Refuse subnets that this installation builds otherwise than ``recorded`` (``config()['subnets']``):
        another C, mean/std or minimum input (e.g. another timm version)."""
        for column, spec in (("peripheral", self.peripheral_spec), ("foveal", self.foveal_spec)):
            record = (recorded or {}).get(column)
            if spec is None or not isinstance(record, Mapping):
                continue
            diffs = record_differences(record, spec)
            if diffs:
                raise ModelError(f"{source}: its {column} subnet {spec.name} was saved as {'; '.join(diffs)}; "
                                 f"{_rebuild_advice(record)}")


def _rebuild_advice(record: Mapping) -> str:
    version = record.get("timm_version")
    if version:
        from .arch_timm import timm_module

        return (f"it was made with timm {version}, this is timm {timm_module().__version__}: "
                f"install timm=={version} to use it")
    return "the checkpoint was written by another gpf version"


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


def variant_of(config: Mapping) -> str:
    """The variant of a stage-2 model config; ``single``/``random`` of a config that records no
    ``first_view`` (gpf <= 0.2) are today's ``single-frozen``/``random-frozen``."""
    variant = config.get("variant", DEFAULT_VARIANT)
    if "first_view" not in config:
        return LEGACY_VARIANT_NAMES.get(variant, variant)
    return variant


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
    variant = variant_of(config)
    two_columns = variant in VARIANT_TABLE and VARIANT_TABLE[variant].columns == 2
    model = GPFNet(name, variant, _config_value(config, "num_classes", int),
                   peripheral_backbone=config.get("peripheral_backbone") if two_columns else None,
                   branch_width=_config_value(config, "branch_width", int, BRANCH_WIDTH),
                   fusion_width=_config_value(config, "fusion_width", int, FUSION_WIDTH),
                   gif_hidden=config.get("gif_hidden") if two_columns else None,
                   dropout=_config_value(config, "dropout", float, 0.5))
    model.check_subnets(config.get("subnets"))
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
            stage1_params = count_parameters(PeripheralNet(name)) if spec.default_eb_layer else None
        rows.append({"backbone": name, "channels": spec.channels, "stride": spec.stride,
                     "min_input": spec.min_input, "eb_layer": spec.default_eb_layer or None,
                     "gif": [spec.gif_hidden, spec.channels], "backbone_params": backbone_params,
                     "stage1_params": stage1_params, "params": counts, "imagenet": _has_imagenet(spec)})
    return rows


def _has_imagenet(spec: BackboneSpec) -> bool:
    if spec.is_timm:
        from .arch_timm import timm_facts

        facts = timm_facts(spec.name)
        return bool(facts.hub_repo or facts.url)
    return spec.torchvision_weights is not None


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def format_backbone_table(rows: Sequence[dict], num_classes: int = 10) -> str:
    """A fixed-width text table of :func:`describe_backbones` rows."""
    header = ["backbone", "C", "stride", "min in", "EB layer", "GIF [W1,C]", "backbone", "stage 1",
              *[f"{v} (N={num_classes})" for v in VARIANTS], "ImageNet"]
    body = [[r["backbone"], str(r["channels"]), str(r["stride"]), str(r["min_input"]), r["eb_layer"] or "-",
             f"[{r['gif'][0]},{r['gif'][1]}]", _millions(r["backbone_params"]),
             "-" if r["stage1_params"] is None else _millions(r["stage1_params"]),
             *[_millions(r["params"][v]) for v in VARIANTS], "yes" if r["imagenet"] else "no"] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line).rstrip() for line in [header, *body])
