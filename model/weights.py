"""Loading backbone weights: ``'none'``, ``'imagenet'`` or a local file.

* ``'imagenet'``: torchvision's ImageNet weights file, looked up in the torch hub
  cache (``torch.hub.get_dir()/checkpoints/<file>``, i.e. ``$TORCH_HOME/hub``).
  If it is not there it is downloaded (the user asked for it); if that fails the
  error names the URL and the exact path to place the file at. Works offline
  once the file is cached.
* a path: a state dict in torchvision's key names (whole model or a bare
  ``features`` dict), gpf's own names, or a gpf checkpoint (stage 1: its
  ``features``; stage 2: its peripheral subnet); for a ``timm:NAME`` backbone a
  timm state dict (its classifier's keys are ignored). ``.safetensors`` files
  are read with safetensors.

Every other file is read with ``torch.load(..., weights_only=True)``: tensors and
plain types only, never arbitrary pickled objects. timm's own ImageNet weights
(``'imagenet'`` for ``timm:NAME``) are loaded by timm: see :mod:`gpf.model.arch_timm`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from ..errors import GPFError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60
_LIST_LIMIT = 8
# Wrappers other tools put around a state dict.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


class WeightsError(GPFError, ValueError):
    """Weights that cannot be found, read, or fitted to the model (message says which and why);
    ``param`` is the parameter the advice names (the CLI words it as its option), if any."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# ----------------------------------------------------------------------------- ImageNet

def torchvision_weights_entry(weights_name: str):
    """The torchvision weights enum member named ``"VGG16_Weights.IMAGENET1K_V1"``."""
    from torchvision.models import get_weight

    return get_weight(weights_name)


def imagenet_cache_path(weights_name: str) -> Path:
    """Where torch hub keeps the file of ``weights_name`` (exists or not)."""
    url = torchvision_weights_entry(weights_name).url
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _expected_hash_prefix(filename: str) -> str | None:
    match = torch.hub.HASH_REGEX.search(filename)
    return match.group(1) if match else None


def _download(url: str, destination: Path, timeout: float) -> None:
    """Stream ``url`` to a temp file next to ``destination``, check its hash prefix, rename."""
    from ..fsutil import atomic_write

    destination.parent.mkdir(parents=True, exist_ok=True)
    prefix = _expected_hash_prefix(destination.name)

    def stream(out) -> None:
        sha = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                sha.update(chunk)
                out.write(chunk)
        if prefix and not sha.hexdigest().startswith(prefix):
            raise WeightsError(f"downloaded {url} but its sha256 {sha.hexdigest()[:12]}... does not start "
                               f"with {prefix!r} (from the file name); the download is corrupt, try again")

    atomic_write(destination, stream)


def imagenet_weights_file(backbone_name: str, weights_name: str | None, *, download: bool = True,
                          timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Path of the cached ImageNet weights of ``backbone_name``, downloading once if allowed."""
    if not weights_name:
        from .backbones import list_backbones, get_spec

        with_weights = [n for n in list_backbones() if get_spec(n).torchvision_weights]
        raise WeightsError(f"backbone {backbone_name!r} has no ImageNet weights; use weights='none' or "
                           f"weights=PATH. Backbones with ImageNet weights: {', '.join(with_weights)}", param="weights")
    path = imagenet_cache_path(weights_name)
    if path.is_file():
        return path
    entry = torchvision_weights_entry(weights_name)
    size = entry.meta.get("_file_size")
    size_text = f", {size:.0f} MB" if size else ""
    where = (f"Download {entry.url}{size_text} on a machine with network access and copy it to {path} "
             f"(the torch hub cache: $TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints), "
             f"or give a local state dict as weights=PATH.")
    if not download:
        raise WeightsError(f"ImageNet weights of {backbone_name!r} are not in the torch hub cache. {where}",
                           param="weights")
    log.info("downloading %s to %s", entry.url, path)
    try:
        _download(entry.url, path, timeout)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise WeightsError(f"ImageNet weights of {backbone_name!r} are not in the torch hub cache and the "
                           f"download failed ({exc}). {where}", param="weights") from exc
    return path


# ----------------------------------------------------------------------------- reading

def read_safetensors(path: Path) -> dict:
    """The tensors of a ``.safetensors`` file, on CPU, with errors that name the file."""
    try:
        from safetensors.torch import load_file
    except ImportError as exc:        # pragma: no cover - safetensors is an install requirement
        raise WeightsError(f"weights file {path} is a .safetensors file, which needs the safetensors package "
                           f"({exc}): pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:          # safetensors raises its own SafetensorError (and OSError)
        raise WeightsError(f"weights file {path} is not a readable .safetensors file (truncated or another "
                           f"format): {type(exc).__name__}: {str(exc)[:200]}") from exc


def read_state_dict(path: str | os.PathLike) -> dict:
    """The state dict in ``path``: ``.safetensors`` read by safetensors, anything else by
    ``torch.load(path, weights_only=True)``; on CPU, with errors that name the file."""
    from .checkpoint import safe_torch_load

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (weights must be 'none', 'imagenet' or a PATH)")
    if path.suffix.lower() == ".safetensors":
        return read_safetensors(path)
    obj = safe_torch_load(path, "weights file", WeightsError)
    if not isinstance(obj, dict):
        raise WeightsError(f"weights file {path} holds a {type(obj).__name__}, expected a state dict")
    return obj


def unwrap_state_dict(obj, source: str = "state dict") -> dict[str, torch.Tensor]:
    """The tensor dict inside ``obj``: gpf checkpoints and common wrappers are opened.

    A gpf stage-1 checkpoint gives its model's keys (``features.*``, ``head.*``);
    a stage-2 checkpoint gives its peripheral subnet renamed to ``features.*``.
    """
    from .checkpoint import MADE_BY, Checkpoint, CheckpointError

    if not isinstance(obj, Checkpoint) and obj.get("format") in MADE_BY:
        try:
            obj = Checkpoint.from_dict(obj, source)
        except CheckpointError as exc:
            raise WeightsError(str(exc)) from None
    if isinstance(obj, Checkpoint):
        if obj.kind == "stage2":
            return {"features." + k[len("peripheral."):]: v for k, v in obj.state_dict.items()
                    if k.startswith("peripheral.")}
        return dict(obj.state_dict)
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    return dict(obj)


# ----------------------------------------------------------------------------- fitting

def rename_by_prefix(state: Mapping[str, torch.Tensor], prefixes: Mapping[str, str | None]) -> dict:
    """Replace the longest matching key prefix; prefixes mapped to None are dropped, others kept as-is."""
    ordered = sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)
    renamed = {}
    for key, value in state.items():
        for old, new in ordered:
            if key.startswith(old):
                if new is not None:
                    renamed[new + key[len(old):]] = value
                break
        else:
            renamed[key] = value
    return renamed


def _candidates(state: dict, keymap: Mapping[str, str | None]) -> list[tuple[str, dict]]:
    """Readings of ``state`` in gpf's key names, most literal first."""
    found = [("gpf key names", state)]
    if keymap:
        found.append(("torchvision key names", rename_by_prefix(state, keymap)))
    found.append(("a bare features state dict", {f"features.{k}": v for k, v in state.items()}))
    if any(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        stripped = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        found.extend((f"{label} (after removing 'module.')", cand)
                     for label, cand in _candidates(stripped, keymap))
    return found


def _listing(keys, limit: int = _LIST_LIMIT) -> str:
    """Keys grouped by module: ``features.conv1.{bias,weight}, ...``, at most ``limit`` modules."""
    by_module: dict[str, list[str]] = {}
    for key in sorted(keys):
        module, _, leaf = key.rpartition(".")
        by_module.setdefault(module, []).append(leaf)
    shown = [f"{module}.{{{','.join(leaves)}}}" if len(leaves) > 1 else f"{module}.{leaves[0]}"
             for module, leaves in list(by_module.items())[:limit]]
    more = f", ... ({len(by_module) - limit} more modules)" if len(by_module) > limit else ""
    return ", ".join(shown) + more


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, keymap=None,
                   source: str = "state dict", ignore_prefixes: tuple[str, ...] = ()) -> dict:
    """``state`` renamed to ``model``'s keys, or a :class:`WeightsError` listing what does not fit.

    Tries gpf's names, then torchvision's (``keymap``), then a bare ``features``
    dict, and keeps the reading that matches most keys. Keys under
    ``ignore_prefixes`` (e.g. ``'head.'`` when only a backbone is wanted) are
    dropped; any other extra, missing or mis-shaped key is an error.
    """
    target = model.state_dict()
    best_label, best = max(_candidates(dict(state), keymap or {}),
                           key=lambda item: len(target.keys() & item[1].keys()))
    fitted = {k: v for k, v in best.items() if not k.startswith(ignore_prefixes)}
    missing = target.keys() - fitted.keys()
    unexpected = fitted.keys() - target.keys()
    mis_shaped = [f"{k} {list(fitted[k].shape)} vs model {list(target[k].shape)}"
                  for k in sorted(target.keys() & fitted.keys())
                  if not isinstance(fitted[k], torch.Tensor) or fitted[k].shape != target[k].shape]
    if missing or unexpected or mis_shaped:
        lines = [f"{source} does not fit {_model_label(model)} (read as {best_label}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if mis_shaped:
            lines.append(f"  shape mismatches ({len(mis_shaped)}): {'; '.join(mis_shaped[:_LIST_LIMIT])}")
        lines.append("  Was it saved from a different backbone? Weights must come from the same architecture.")
        raise WeightsError("\n".join(lines))
    return fitted


def _model_label(model: nn.Module) -> str:
    spec = getattr(model, "spec", None)
    name = getattr(spec, "name", None)
    return f"backbone {name!r} ({type(model).__name__})" if name else type(model).__name__


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], *, keymap=None,
                    source: str = "state dict", ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Fit ``state`` (see :func:`fit_state_dict`) and load it strictly."""
    model.load_state_dict(fit_state_dict(model, state, keymap=keymap, source=source,
                                         ignore_prefixes=ignore_prefixes), strict=True)


def resolve_weights_state(backbone_name: str, weights: str | os.PathLike, *, download: bool = True) -> tuple[dict, str]:
    """(state dict, description of its source) for ``weights`` = ``'imagenet'`` or a PATH."""
    from .backbones import get_spec, is_timm_name

    if isinstance(weights, str) and weights == "imagenet":
        if is_timm_name(backbone_name):
            raise WeightsError(f"ImageNet weights of {backbone_name!r} are loaded by timm when the backbone is "
                               f"built: create_backbone({backbone_name!r}, 'imagenet')", param="weights")
        path = imagenet_weights_file(backbone_name, get_spec(backbone_name).torchvision_weights,
                                     download=download)
        return read_state_dict(path), f"ImageNet weights {path}"
    if isinstance(weights, str) and weights.lower() in ("imagenet", "none", ""):
        raise WeightsError(f"weights {weights!r}: use 'none', 'imagenet' or a PATH (lower case)")
    path = Path(weights)
    if not path.exists():
        raise WeightsError(f"weights {str(weights)!r} is neither 'none', 'imagenet' nor an existing file")
    return unwrap_state_dict(read_state_dict(path), source=f"weights file {path}"), f"weights file {path}"


def load_backbone_weights(backbone: nn.Module, weights: str | os.PathLike, *, download: bool = True) -> None:
    """Load ``'imagenet'`` or a PATH into a :class:`~gpf.model.backbones.Backbone` (head and classifier keys
    ignored)."""
    from .backbones import is_timm_name, torchvision_keys

    name = backbone.spec.name
    state, source = resolve_weights_state(name, weights, download=download)
    ignore = ("head.",)
    if is_timm_name(name):
        from .arch_timm import classifier_prefixes

        ignore = classifier_prefixes(name)
    load_state_into(backbone, state, keymap=torchvision_keys(name), source=source, ignore_prefixes=ignore)


def load_classifier_weights(model: nn.Module, weights: str | os.PathLike, *, download: bool = True) -> None:
    """Load ``'imagenet'`` or a PATH into a features + head classifier (all keys must fit)."""
    from .backbones import torchvision_keys

    name = model.spec.name
    state, source = resolve_weights_state(name, weights, download=download)
    load_state_into(model, state, keymap=torchvision_keys(name), source=source)
