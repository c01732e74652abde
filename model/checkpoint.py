"""gpf checkpoints: one ``torch.save`` file of tensors and plain types.

Payload (format_version 1)::

    {'format': 'gpf-stage1' | 'gpf-stage2', 'format_version': 1,
     'model_config': {'model', 'backbone', 'num_classes', ..., 'view_size', 'threshold', 'scores', ...},
     'state_dict': {name: tensor},
     'meta': {'gpf_version', 'torch_version', 'created', ...},
     # stage 2 only: the attention model that made the foveal crops
     'attention': {'stage1_state_dict', 'stage1_config', 'stage1_digest', 'tau', 'eb_layer',
                   'contrastive', 'view_size'}}

Further top-level keys (e.g. a trainer's optimizer state) are allowed if they
are plain too. Files are written atomically and read with
``torch.load(weights_only=True)``; a file holding pickled Python objects is
refused, never executed.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from gpf.errors import GPFError
from gpf.fsutil import atomic_write

FORMAT_VERSION = 1
FORMATS = {"stage1": "gpf-stage1", "stage2": "gpf-stage2"}
MADE_BY = {"gpf-stage1": "`gpf train stage1`", "gpf-stage2": "`gpf train stage2`"}
# Exact types (not subclasses): torch.load(weights_only=True) refuses e.g. numpy.float64
# (a float subclass) or torch's TorchVersion (a str subclass).
_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)
_PLAIN_MAPPINGS = (dict, OrderedDict)
_PLAIN_SEQUENCES = (list, tuple, torch.Size)
_TENSORS = (torch.Tensor, nn.Parameter)


class CheckpointError(GPFError, ValueError):
    """A checkpoint that cannot be written, read or used (message names the file and the fix)."""


# ----------------------------------------------------------------------------- plain payloads

def check_plain(obj: Any, where: str = "payload") -> None:
    """Raise :class:`CheckpointError` naming the first value that is not a tensor or plain type."""
    if type(obj) in _TENSORS or type(obj) in _PLAIN_SCALARS:
        return
    if type(obj) in _PLAIN_MAPPINGS:
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise CheckpointError(f"{where} has a key {key!r} of type {type(key).__name__}; "
                                      f"keys must be str or int")
            check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in _PLAIN_SEQUENCES:
        for index, value in enumerate(obj):
            check_plain(value, f"{where}[{index}]")
        return
    raise CheckpointError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}; checkpoints hold only "
                          f"tensors and plain types (dict, list, tuple, str, int, float, bool, None)")


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` detached and on the CPU."""
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}


def state_dict_digest(state_dict: Mapping[str, Any]) -> str:
    """sha256 over the sorted keys and each tensor's dtype, shape and bytes (device independent)."""
    sha = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        sha.update(key.encode("utf-8") + b"\0")
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            sha.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode() + b"\0")
            sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            sha.update(repr(value).encode("utf-8"))
        sha.update(b"\0")
    return sha.hexdigest()


def default_meta(**extra: Any) -> dict:
    """gpf and torch versions and the UTC creation time, plus ``extra``."""
    from gpf._version import __version__

    return {"gpf_version": __version__, "torch_version": str(torch.__version__),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}


# ----------------------------------------------------------------------------- files

def save_checkpoint(path: str | os.PathLike, payload: Mapping) -> Path:
    """Write ``payload`` atomically: temp file in the same folder, fsync, ``os.replace``.

    A crash or error leaves either the previous file or the new one, never a
    partial file. ``payload`` must be plain (see :func:`check_plain`).
    """
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"checkpoint payload must be a dict, got {type(payload).__name__}")
    fmt = payload.get("format")
    if fmt is not None and fmt not in MADE_BY:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; expected one of {', '.join(MADE_BY)}")
    check_plain(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: torch.save(dict(payload), handle))
    return path


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint",
                    error: type[Exception] = CheckpointError, map_location="cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the cause."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        text = str(exc)
        # torch words a refused global two ways: "Unsupported global: GLOBAL x.y" and, for blocked
        # modules, "unsupported GLOBAL x.y whose module x is blocked". Never pass on torch's advice to
        # retry with weights_only=False: that would run the file's code.
        refused = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
        if refused:
            raise error(f"{what} {path} holds pickled Python objects ({refused.group(1)}); gpf only loads "
                        f"tensors and plain types. Save state_dict()s and plain values instead.") from exc
        raise error(f"{what} {path} is not a readable torch file (truncated, corrupt or another format): "
                    f"{type(exc).__name__}: {_short_reason(text)}") from exc


def _short_reason(text: str) -> str:
    """The informative line of a torch.load error (torch wraps unpickler errors in boilerplate)."""
    match = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (match.group(1) if match else lines[0] if lines else "")[:200]


def _kind(fmt: str) -> str:
    return {v: k for k, v in FORMATS.items()}[fmt]


def resolve_checkpoint_path(path: str | os.PathLike, prefer: str = "best") -> Path:
    """A checkpoint file, or a run folder's ``best.pt`` (``prefer='best'``) else ``last.pt`` (or the reverse)."""
    if prefer not in ("best", "last"):
        raise ValueError(f"prefer must be 'best' or 'last', got {prefer!r}")
    path = Path(path)
    if path.is_dir():
        order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        for name in order:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} is a folder without {' or '.join(order)}; pass a checkpoint file "
                              "or a run folder made by `gpf train`")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    return path


def load_checkpoint(path: str | os.PathLike, expect: str | None = None, map_location="cpu") -> dict:
    """Read and check a gpf checkpoint; ``expect`` = ``'stage1'`` or ``'stage2'`` refuses the other kind."""
    if expect is not None and expect not in FORMATS:
        raise ValueError(f"expect must be one of {', '.join(FORMATS)} or None, got {expect!r}")
    path = Path(path)
    payload = safe_torch_load(path, "checkpoint", CheckpointError, map_location)
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt not in MADE_BY:
        raise CheckpointError(f"{path} is not a gpf checkpoint (no 'format' of {', '.join(MADE_BY)}); gpf "
                              f"checkpoints are made by `gpf train stage1` and `gpf train stage2`. To start a "
                              f"backbone from a plain state dict pass it as --weights PATH.")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}; this gpf reads up to {FORMAT_VERSION}. "
                              f"Upgrade gpf to read it.")
    for key in ("model_config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path} ({fmt}) lacks its {key!r} dict; the file is damaged")
    if expect is not None and fmt != FORMATS[expect]:
        wanted = FORMATS[expect]
        raise CheckpointError(f"{path} is a {_kind(fmt).replace('stage', 'stage-')} checkpoint (made by "
                              f"{MADE_BY[fmt]}), but a {expect.replace('stage', 'stage-')} checkpoint "
                              f"(made by {MADE_BY[wanted]}) is needed here")
    if fmt == FORMATS["stage2"] and not isinstance(payload.get("attention"), dict):
        raise CheckpointError(f"{path} is a stage-2 checkpoint without its 'attention' block; the file is damaged")
    return payload


# ----------------------------------------------------------------------------- payloads

def _data_config(view_size, threshold, scores) -> dict:
    return {"view_size": view_size, "threshold": threshold,
            "scores": list(scores) if scores is not None else None}


def stage1_payload(model: nn.Module, *, view_size: int | None = None, threshold: float | None = None,
                   scores=None, extra_config: Mapping | None = None, meta: Mapping | None = None) -> dict:
    """Payload of a stage-1 (attention) model: a ``PeripheralNet`` or an ImageNet ``Classifier``."""
    return {"format": FORMATS["stage1"], "format_version": FORMAT_VERSION,
            "model_config": {**model.config(), **_data_config(view_size, threshold, scores), **(extra_config or {})},
            "state_dict": cpu_state_dict(model), "meta": dict(meta) if meta is not None else default_meta()}


def attention_block(attention_model: nn.Module | Mapping, *, tau: float, eb_layer: str, contrastive: bool,
                    view_size: int) -> dict:
    """The ``'attention'`` entry of a stage-2 payload from a model or a stage-1 payload."""
    if isinstance(attention_model, nn.Module):
        config, state = attention_model.config(), cpu_state_dict(attention_model)
    else:
        config, state = dict(attention_model["model_config"]), attention_model["state_dict"]
    return {"stage1_state_dict": state, "stage1_config": config, "stage1_digest": state_dict_digest(state),
            "tau": float(tau), "eb_layer": eb_layer, "contrastive": bool(contrastive), "view_size": int(view_size)}


def stage2_payload(model: nn.Module, attention: Mapping, *, view_size: int | None = None,
                   threshold: float | None = None, scores=None, extra_config: Mapping | None = None,
                   meta: Mapping | None = None) -> dict:
    """Payload of a stage-2 ``GPFNet``; ``attention`` from :func:`attention_block`."""
    return {"format": FORMATS["stage2"], "format_version": FORMAT_VERSION,
            "model_config": {**model.config(), **_data_config(view_size, threshold, scores), **(extra_config or {})},
            "state_dict": cpu_state_dict(model), "attention": dict(attention),
            "meta": dict(meta) if meta is not None else default_meta()}


# ----------------------------------------------------------------------------- rebuilding

def _has_non_persistent_buffers(model: nn.Module) -> bool:
    return any(module._non_persistent_buffers_set for module in model.modules())


def instantiate(config: Mapping, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Build the model of ``config`` and load ``state_dict`` strictly, in eval mode.

    Parameters are allocated uninitialised (built on the ``meta`` device) and
    then filled from the state dict, so rebuilding VGG16 costs no random init.
    """
    from gpf.model.gpf import build_model

    with torch.device("meta"):
        probe = build_model(config)
    if _has_non_persistent_buffers(probe):
        model = build_model(config)  # such buffers are not in the state dict: initialise for real
    else:
        model = probe.to_empty(device="cpu")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: the state dict does not fit the model of its config "
                              f"({config.get('model')}, backbone {config.get('backbone')!r}): {exc}") from exc
    return model.eval()


def _as_payload(ckpt, expect: str | None = None) -> dict:
    if isinstance(ckpt, (str, os.PathLike)):
        return load_checkpoint(ckpt, expect=expect)
    if not isinstance(ckpt, Mapping) or ckpt.get("format") not in MADE_BY:
        raise CheckpointError("expected a gpf checkpoint payload (from load_checkpoint) or its path")
    return dict(ckpt)


def model_from_checkpoint(ckpt) -> nn.Module:
    """The model a checkpoint (payload or path) holds: ``PeripheralNet``/``Classifier`` or ``GPFNet``, eval mode."""
    payload = _as_payload(ckpt)
    return instantiate(payload["model_config"], payload["state_dict"], source=f"{payload['format']} checkpoint")


def attention_model_from_checkpoint(ckpt) -> nn.Module:
    """The stage-1 attention model: a stage-1 checkpoint's model, or the one embedded in a stage-2 checkpoint.

    The embedded weights are checked against their recorded digest.
    """
    payload = _as_payload(ckpt)
    if payload["format"] == FORMATS["stage1"]:
        return model_from_checkpoint(payload)
    block = payload["attention"]
    state = block["stage1_state_dict"]
    digest = state_dict_digest(state)
    if digest != block.get("stage1_digest"):
        raise CheckpointError(f"the stage-1 weights embedded in this stage-2 checkpoint have digest "
                              f"{digest[:12]}..., not the recorded {str(block.get('stage1_digest'))[:12]}...; "
                              f"the file is damaged")
    return instantiate(block["stage1_config"], state, source="embedded stage-1 model")
