"""Backbones from timm: ``timm:NAME`` for any ``NAME`` of ``timm.list_models()`` (optionally ``NAME.TAG``).

A timm model serves a stage-2 column (the foveal subnet, or either subnet):

* **Built** with ``num_classes=0`` (no classifier) and, where the model class takes
  them, ``dynamic_img_size=True`` and ``dynamic_img_pad=True`` (ViT, DeiT, EVA, ...:
  position embeddings resampled to the view's grid, sides padded to the patch
  size) so views of any aspect ratio run as they are.
* **Pooled descriptor** ``[B, C]`` through timm's own head path,
  ``forward_head(forward_features(x), pre_logits=True)``: ViT/DeiT pool their
  tokens (class token or mean), Swin its NHWC map, ConvNeXt pools then applies
  its head norm, MobileNetV3 its ``conv_head``. C is the width of that output
  (``head_hidden_size``), not always ``num_features``.
* **Normalisation**: the model's ``pretrained_cfg`` mean and std.
* **Input sizes**, found once per name by a probe on the ``meta`` device (no
  weights allocated, cached): a model that takes any size gets it; one whose
  sides must be multiples of ``m`` (Swin: its patch size 4) gets a view resized
  up to the next multiple (bilinear); one that takes only its
  ``pretrained_cfg`` input size (MLP-Mixer, LeViT, ...) gets every view resized
  to it. The resize is part of the model's forward, so training, ``gpf
  evaluate`` and ``gpf predict`` do the same. ``min_input`` is, as for the
  registered backbones, the smallest view side that runs (after that
  adaptation) and at least the stride (the last feature map's reduction);
  1 for a model whose views are all resized to its fixed size.
* **GIF width** W1 = C / 4 rounded to a multiple of 8 (at least 8): between the
  paper's C / 2 (VGG16, AlexNet) and C / 8 (ResNet), its Inception-v3 ratio.
* **Weights**: ``'imagenet'`` through timm's pretrained loading (its Hugging Face
  hub cache); offline without the file the error names the hub repo and file
  and says ``weights=PATH`` loads a local copy. A PATH (a timm state dict,
  ``.pt``/``.pth`` or ``.safetensors``) is loaded by gpf's strict loader
  (:func:`gpf.model.weights.load_backbone_weights`).

* **Stage 1** (Excitation Backprop): timm's ResNet (``resnet*``, ``resnet*d``,
  ``resnet*t``) and RegNetX (``regnetx_*``) are stage-1 networks too
  (:mod:`gpf.model.eb_timm` puts them in the ``features`` + ``head`` form EB
  walks, keys unchanged); their spec's ``default_eb_layer`` is the stride-8 stage
  (``features.layer2`` / ``features.s2``). Every other family has
  ``default_eb_layer=''`` and is refused as a stage-1 network, naming the first
  module EB cannot pass and why. :func:`create_timm_classifier` builds the
  ImageNet classifier (with timm's ``fc``) for attention without a stage-1 model.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import TIMM_PREFIX as PREFIX
from .backbones import Backbone, BackboneError, BackboneSpec, UnknownBackboneError, is_timm_name
#: Constructor flags that let a fixed-size model class take any input size (set when the class has them).
DYNAMIC_SIZE_FLAGS = ("dynamic_img_size", "dynamic_img_pad")
#: Side multiples tried when a model refuses odd sizes (patch sizes and strides in use).
_MULTIPLES = (2, 4, 8, 14, 16, 28, 32)
GIF_RATIO = 4          # W1 = C / GIF_RATIO (rounded to a multiple of 8): see the module doc
HUB_FILES = ("model.safetensors", "pytorch_model.bin")   # what timm fetches from a hub repo, in order


class TimmError(BackboneError):
    """A timm backbone that cannot be built or probed (the message names the model and why)."""


def timm_module():
    """``import timm`` with an error that says how to install it."""
    try:
        import timm
    except ImportError as exc:        # pragma: no cover - timm is an install requirement
        raise TimmError(f"timm backbones need the timm package ({exc}); pip install timm") from None
    return timm


def _arch(name: str) -> str:
    arch = name[len(PREFIX):] if is_timm_name(name) else name
    if not arch:
        raise UnknownBackboneError(f"backbone {name!r} names no timm model; give timm:NAME, e.g. timm:resnet50 "
                                   "(list them with `gpf models --timm 'resnet*'`)")
    return arch


def check_timm_name(name: str) -> str:
    """The timm model name of ``'timm:NAME[.TAG]'``; unknown names are answered with close matches."""
    timm = timm_module()
    arch = _arch(name)
    base, _, tag = arch.partition(".")
    known = timm.list_models()
    if base not in known:
        close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise UnknownBackboneError(f"unknown timm model {base!r} in backbone {name!r}.{hint} "
                                   f"`gpf models --timm PATTERN` lists the {len(known)} timm models "
                                   f"(timm {timm.__version__}), e.g. --timm '*{base[:4]}*'")
    if tag:
        tagged = timm.list_pretrained(f"{base}.*")
        if arch not in tagged:
            raise UnknownBackboneError(f"timm model {base!r} has no pretrained tag {tag!r} (backbone {name!r}); "
                                       f"its tags: {', '.join(t.partition('.')[2] for t in tagged) or 'none'}")
    return arch


# ----------------------------------------------------------------------------- facts of a model

@dataclass(frozen=True)
class TimmFacts:
    """What gpf learns about a timm model once (cached per name): its spec and how to build and load it."""
    spec: BackboneSpec
    arch: str
    kwargs: tuple                  # (flag, value) pairs passed to timm.create_model
    hub_repo: str | None           # pretrained_cfg hf_hub_id
    url: str | None                # pretrained_cfg url (when the weights are not on the hub)
    classifiers: tuple[str, ...]   # the classifier's module names (their keys are dropped from weights files)


def _create(arch: str, kwargs: Sequence = (), *, classifier: bool = False, **extra) -> nn.Module:
    """timm's ``arch``: without its classifier (``num_classes=0``), or with it (``classifier=True``)."""
    heads = {} if classifier else {"num_classes": 0}
    return timm_module().create_model(arch, **heads, **dict(kwargs), **extra)


def _dynamic_kwargs(model: nn.Module) -> tuple:
    """The flags of :data:`DYNAMIC_SIZE_FLAGS` the model's class takes by name."""
    params = inspect.signature(type(model).__init__).parameters
    return tuple((flag, True) for flag in DYNAMIC_SIZE_FLAGS if flag in params)


def gif_width(channels: int) -> int:
    """W1 of the GIF bottleneck for a timm backbone of C channels (module doc)."""
    return max(8, int(round(channels / GIF_RATIO / 8)) * 8)


def _runs(model: nn.Module, height: int, width: int) -> int | None:
    """Descriptor width C when ``model`` takes a ``1 x 3 x height x width`` input (meta device), else None."""
    try:
        with torch.no_grad():
            x = torch.empty(1, 3, height, width, device="meta")
            out = model.forward_head(model.forward_features(x), pre_logits=True)
    except Exception:             # any refusal (assertion, shape error) means: not this size
        return None
    return int(out.shape[-1]) if out.dim() == 2 and out.shape[0] == 1 and out.shape[-1] > 0 else None


def _input_rule(model: nn.Module, ref: int) -> tuple[int, tuple[int, int] | None]:
    """(side multiple, fixed input size or None) of a model that runs at ``ref x ref``."""
    wide = ref + ref // 2
    if _runs(model, ref + 1, ref - 1) and _runs(model, ref, wide):
        return 1, None
    for multiple in _MULTIPLES:
        if _runs(model, ref - multiple, ref + multiple) and _runs(model, ref, wide // multiple * multiple):
            return multiple, None
    return 1, (ref, ref)


def _smallest_side(model: nn.Module, multiple: int, ref: int) -> int:
    """Smallest side (a multiple of ``multiple``) the model takes, by bisection (feature maps shrink monotonically)."""
    low, high = 1, ref // multiple            # high runs
    while low < high:
        middle = (low + high) // 2
        if _runs(model, middle * multiple, middle * multiple):
            high = middle
        else:
            low = middle + 1
    return low * multiple


def _stride(model: nn.Module, ref: int) -> int:
    info = getattr(model, "feature_info", None)
    try:
        return int(info[-1]["reduction"])
    except (TypeError, KeyError, IndexError):
        return ref


def _as_tuple(value) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (str(value),)


@functools.lru_cache(maxsize=None)
def timm_facts(name: str) -> TimmFacts:
    """Probe ``timm:NAME`` on the meta device once: C, stride, input rule, minimum side, mean/std."""
    timm = timm_module()
    arch = check_timm_name(name)
    with torch.device("meta"):
        model = _create(arch)
        kwargs = _dynamic_kwargs(model)
        if kwargs:
            model = _create(arch, kwargs)
    model.eval()
    cfg = dict(model.pretrained_cfg or {})
    ref = int(cfg.get("input_size", (3, 224, 224))[-1])
    channels = _runs(model, ref, ref)
    if channels is None:
        raise TimmError(f"backbone {name!r}: timm's {arch} does not give a pooled [B, C] descriptor from "
                        f"forward_head(..., pre_logits=True) on a {ref}x{ref} input; gpf cannot use it as a column")
    multiple, fixed = _input_rule(model, ref)
    stride = _stride(model, ref)
    min_input = 1 if fixed else max(stride, _smallest_side(model, multiple, ref) - multiple + 1)
    spec = BackboneSpec(
        name=PREFIX + arch, channels=channels, stride=stride, min_input=min_input,
        default_eb_layer=stage1_eb_layer(model),
        gif_hidden=gif_width(channels), mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))), provider="timm",
        input_multiple=multiple, fixed_input=fixed,
        description=f"timm {arch} (timm {timm.__version__})" + (f", resized to {fixed[0]}x{fixed[1]}" if fixed else ""))
    return TimmFacts(spec=spec, arch=arch, kwargs=kwargs, hub_repo=cfg.get("hf_hub_id"), url=cfg.get("url"),
                     classifiers=_as_tuple(cfg.get("classifier")))


def stage1_eb_layer(model: nn.Module) -> str:
    """EB's default read-out layer when Excitation Backprop walks ``model`` (a timm ResNet or RegNetX), else ''."""
    from .attention import EBUnsupportedError
    from .eb_timm import eb_family, eb_walkable_timm, timm_default_eb_layer

    if eb_family(model) is None:
        return ""
    try:
        eb_walkable_timm(model)
        return timm_default_eb_layer(model)
    except EBUnsupportedError:
        return ""


def timm_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``timm:NAME`` (probed once, see :func:`timm_facts`)."""
    return timm_facts(name).spec


# ----------------------------------------------------------------------------- forward

def fit_input(x: torch.Tensor, spec: BackboneSpec) -> torch.Tensor:
    """The view as the model takes it: resized to its fixed size, or up to the next side multiple (module doc)."""
    height, width = x.shape[-2:]
    if spec.fixed_input is not None:
        size = tuple(spec.fixed_input)
    elif spec.input_multiple > 1:
        m = spec.input_multiple
        size = (-(-height // m) * m, -(-width // m) * m)
    else:
        return x
    if size == (height, width):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def timm_features(model: nn.Module, x: torch.Tensor, spec: BackboneSpec) -> torch.Tensor:
    """``forward_features`` of the fitted input (a map, NHWC map or tokens, as the model gives it)."""
    return model.forward_features(fit_input(x, spec))


def timm_descriptor(model: nn.Module, x: torch.Tensor, spec: BackboneSpec) -> torch.Tensor:
    """The pooled ``[B, C]`` descriptor through timm's head path (``pre_logits=True``)."""
    return model.forward_head(timm_features(model, x, spec), pre_logits=True)


# ----------------------------------------------------------------------------- building and weights

def create_timm_backbone(name: str, weights="none", *, download: bool = True) -> Backbone:
    """A :class:`Backbone` whose ``features`` is the timm model; ``weights`` 'none' | 'imagenet' | PATH."""
    from .weights import WeightsError, load_backbone_weights

    facts = timm_facts(name)
    if isinstance(weights, str) and weights == "imagenet":
        model = _pretrained(facts, download)
    else:
        model = _create(facts.arch, facts.kwargs)
    backbone = Backbone(facts.spec, model)
    if weights not in (None, "none", "imagenet"):
        if isinstance(weights, str) and weights.lower() in ("imagenet", "none", ""):
            raise WeightsError(f"weights {weights!r}: use 'none', 'imagenet' or a PATH (lower case)", param="weights")
        load_backbone_weights(backbone, weights, download=download)
    return backbone


def create_timm_classifier(name: str, weights="imagenet", *, download: bool = True) -> nn.Module:
    """timm's ``NAME`` with its ImageNet classifier; ``weights`` 'none' | 'imagenet' (timm's pretrained
    loading, offline errors as :func:`create_timm_backbone`'s) | PATH (a timm state dict with the classifier,
    loaded strictly)."""
    from .weights import WeightsError, load_state_into, resolve_weights_state

    facts = timm_facts(name)
    if isinstance(weights, str) and weights == "imagenet":
        return _pretrained(facts, download, classifier=True)
    model = _create(facts.arch, facts.kwargs, classifier=True)
    if weights not in (None, "none"):
        if isinstance(weights, str) and weights.lower() in ("imagenet", "none", ""):
            raise WeightsError(f"weights {weights!r}: use 'none', 'imagenet' or a PATH (lower case)", param="weights")
        state, source = resolve_weights_state(name, weights, download=download)
        load_state_into(model, state, source=source)
    return model


def classifier_prefixes(name: str) -> tuple[str, ...]:
    """Key prefixes (in a :class:`Backbone`'s ``features.*`` names) of the classifier a weights file may hold."""
    return tuple(f"features.{c}." for c in timm_facts(name).classifiers)


def weights_source(facts: TimmFacts) -> str:
    """Where timm fetches the ImageNet weights of a model: the hub repo and file, or the URL."""
    if facts.hub_repo:
        return (f"the file {HUB_FILES[0]} (or {HUB_FILES[1]}) of the Hugging Face hub repo {facts.hub_repo} "
                f"(https://huggingface.co/{facts.hub_repo})")
    if facts.url:
        return f"{facts.url}"
    return "nowhere: timm knows no pretrained weights for it"


def _hub_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
        return str(HF_HUB_CACHE)
    except ImportError:               # pragma: no cover
        return "$HF_HOME/hub"


def _cached_on_hub(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:               # pragma: no cover
        return False
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in HUB_FILES)


def offline_weights_error(name: str, facts: TimmFacts, reason: str):
    """The :class:`~gpf.model.weights.WeightsError` of ImageNet weights timm cannot get."""
    from .weights import WeightsError

    if facts.hub_repo:
        fetch = (f"Download it where there is network access (`huggingface-cli download {facts.hub_repo} "
                 f"{HUB_FILES[0]}`) and copy the hub cache here ({_hub_cache()}, set by HF_HOME), or")
    elif facts.url:
        fetch = "Download it where there is network access and"
    else:
        return WeightsError(f"timm has no ImageNet weights for {name!r}; use weights='none' or weights=PATH",
                            param="weights")
    return WeightsError(f"ImageNet weights of {name!r} are not in timm's cache and could not be fetched "
                        f"({reason}): timm needs {weights_source(facts)}. {fetch} load that file with "
                        "weights=PATH (a state dict .pt/.pth or .safetensors).", param="weights")


def _pretrained(facts: TimmFacts, download: bool, classifier: bool = False) -> nn.Module:
    name = facts.spec.name
    if not facts.hub_repo and not facts.url:
        raise offline_weights_error(name, facts, "none known")
    if not download and facts.hub_repo and not _cached_on_hub(facts.hub_repo):
        raise offline_weights_error(name, facts, "downloads are off")
    try:
        return _create(facts.arch, facts.kwargs, classifier=classifier, pretrained=True)
    except (OSError, RuntimeError, ValueError) as exc:   # huggingface_hub's offline/missing errors are OSErrors
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            reason = "HF_HUB_OFFLINE is set"
        else:
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
        raise offline_weights_error(name, facts, reason) from exc


# ----------------------------------------------------------------------------- listing

def list_timm(pattern: str = "*") -> list[str]:
    """timm model names matching ``pattern`` (fnmatch; a pattern without wildcards matches as a substring)."""
    timm = timm_module()
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return timm.list_models(pattern)


def describe_timm(pattern: str) -> list[dict]:
    """One row per timm model matching ``pattern``: C (of the pooled descriptor), GIF [W1, C], parameters, mean/std,
    and the default EB layer of the ones that can be stage-1 networks (None for the others).

    Models are built on the ``meta`` device (no weights); C is read from timm's
    ``head_hidden_size``, the width ``forward_head(..., pre_logits=True)`` gives.
    """
    rows = []
    for arch in list_timm(pattern):
        with torch.device("meta"):
            model = _create(arch)
        cfg = dict(model.pretrained_cfg or {})
        channels = int(getattr(model, "head_hidden_size", None) or model.num_features)
        rows.append({"backbone": PREFIX + arch, "channels": channels, "gif": [gif_width(channels), channels],
                     "backbone_params": sum(p.numel() for p in model.parameters()),
                     "mean": list(cfg.get("mean", ())), "std": list(cfg.get("std", ())),
                     "input_size": list(cfg.get("input_size", ()))[1:],
                     "eb_layer": stage1_eb_layer(model) or None,
                     "imagenet": bool(cfg.get("hf_hub_id") or cfg.get("url"))})
    return rows


def format_timm_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of :func:`describe_timm` rows."""
    header = ["backbone", "C", "GIF [W1,C]", "params", "mean", "std", "input", "EB layer", "ImageNet"]
    body = [[r["backbone"], str(r["channels"]), f"[{r['gif'][0]},{r['gif'][1]}]", f"{r['backbone_params'] / 1e6:.2f}M",
             ",".join(f"{v:.3f}" for v in r["mean"]), ",".join(f"{v:.3f}" for v in r["std"]),
             "x".join(map(str, r["input_size"])), r["eb_layer"] or "-", "yes" if r["imagenet"] else "no"]
            for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line).rstrip() for line in [header, *body])
