"""gpf checkpoints: one ``torch.save`` file of tensors and plain types, read as a :class:`Checkpoint`.

Payload (``format_version`` 3)::

    {'format': 'gpf-stage1' | 'gpf-stage2', 'format_version': 3,
     'model_config': {'model', 'backbone', 'num_classes', ..., 'view_size', 'threshold', 'scores',
                      'view_round', 'view_min_side', 'view_fit', ...,
                      # stage 2: both subnets
                      'peripheral_backbone', 'gif_hidden': [W1_p, W1_f] | None,
                      'subnets': {'peripheral': {...}, 'foveal': {...}}},
     'state_dict': {name: tensor},
     'meta': {'gpf_version', 'torch_version', 'created', ...},
     # stage 2 only: the attention model that made the foveal crops
     'attention': {'stage1_state_dict', 'stage1_config', 'stage1_digest', 'tau', 'eb_layer',
                   'contrastive', 'view_size'},
     # written by the trainers
     'dataset': {'name', 'scores', 'threshold', 'split_spec', ...},
     'shards': {...},            # stage 2: the identity of the shards it was trained on
     'config': {...}, 'train': {...}}   # resolved config and trainer state (resume)

Format history: 1 (gpf 0.1.0) also kept a stage-1 model's split at the top
level (``split_spec``); 2 keeps it in ``dataset`` only; 3 records both stage-2
subnets, which may differ: ``backbone`` names the foveal subnet (``single``: its
one column), ``peripheral_backbone`` the peripheral one, ``gif_hidden`` is the
[peripheral, foveal] pair of W1, and ``subnets`` keeps each subnet's C,
mean/std, minimum input and timm version (checked when the model is rebuilt).
Versions 1 and 2 are read (a stage-2 model of theirs has one backbone for both
subnets and one W1: read as ``peripheral_backbone = backbone``,
``gif_hidden = [W1, W1]``); a newer version is refused naming both. The optional ``model_config`` keys
``view_round``, ``view_min_side`` (stage 1: how its peripheral views were made)
and ``view_fit`` (both stages: how views below a network's minimum input are
fitted) came with gpf 0.3; a checkpoint without them reads as made
before they existed (:attr:`Checkpoint.view_fit` gives the default). :class:`Checkpoint` is the only
reader and writer of the payload: :meth:`Checkpoint.from_dict` and
:meth:`Checkpoint.to_dict`. Files are written atomically and read with
``torch.load(weights_only=True)``; a file holding pickled Python objects is
refused, never executed.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from ..errors import GPFError
from ..plaintypes import is_kind, kinds_text
from ..fsutil import atomic_write

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
FORMATS = {"stage1": "gpf-stage1", "stage2": "gpf-stage2"}
MADE_BY = {"gpf-stage1": "`gpf train stage1`", "gpf-stage2": "`gpf train stage2`"}
# Exact types (not subclasses): torch.load(weights_only=True) refuses e.g. numpy.float64
# (a float subclass) or torch's TorchVersion (a str subclass).
_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)
_PLAIN_MAPPINGS = (dict, OrderedDict)
_PLAIN_SEQUENCES = (list, tuple, torch.Size)
_TENSORS = (torch.Tensor, nn.Parameter)


class CheckpointError(GPFError, ValueError):
    """A checkpoint that cannot be written, read or used (message names the file and the fix);
    ``param`` is the parameter the advice names (the CLI words it as its option), if any."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


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
    from .._version import __version__

    return {"gpf_version": __version__, "torch_version": str(torch.__version__),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}


# ----------------------------------------------------------------------------- the typed payload

def _check_types(where: str, what: str, data: Mapping, types: Mapping, required: bool = False) -> None:
    """:class:`CheckpointError` naming the key of ``data`` whose value is not of its type ("number": int or
    float, never bool); absent or None values pass unless ``required``."""
    for key, kind in types.items():
        value = data.get(key)
        if value is None:
            if required:
                raise CheckpointError(f"{where}: {what} lacks {key!r}; the file is damaged")
            continue
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not is_kind(value, kinds):
            raise CheckpointError(f"{where}: {what} {key!r} is {value!r}, not a {kinds_text(kinds)}; "
                                  "the file is damaged")


@dataclass
class AttentionBlock:
    """The attention model embedded in a stage-2 checkpoint: the network and settings that made its crops."""
    stage1_state_dict: dict
    stage1_config: dict
    stage1_digest: str
    tau: float
    eb_layer: str
    contrastive: bool
    view_size: int

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "AttentionBlock":
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{where} is a stage-2 checkpoint without its 'attention' block; the file is damaged")
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise CheckpointError(f"{where}: the embedded attention model lacks {', '.join(missing)}; "
                                  "the file is damaged")
        _check_types(where, "the embedded attention model", data, {
            "stage1_state_dict": Mapping, "stage1_config": Mapping, "stage1_digest": str, "tau": "number",
            "eb_layer": str, "contrastive": bool, "view_size": int}, required=True)
        return cls(stage1_state_dict=dict(data["stage1_state_dict"]), stage1_config=dict(data["stage1_config"]),
                   stage1_digest=data["stage1_digest"], tau=float(data["tau"]), eb_layer=data["eb_layer"],
                   contrastive=bool(data["contrastive"]), view_size=int(data["view_size"]))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def verified_state_dict(self) -> dict:
        """The embedded weights, checked against their recorded digest."""
        digest = state_dict_digest(self.stage1_state_dict)
        if digest != self.stage1_digest:
            raise CheckpointError(f"the stage-1 weights embedded in this stage-2 checkpoint have digest "
                                  f"{digest[:12]}..., not the recorded {str(self.stage1_digest)[:12]}...; "
                                  f"the file is damaged")
        return self.stage1_state_dict


_KNOWN_KEYS = ("format", "format_version", "model_config", "state_dict", "meta", "attention", "dataset",
               "shards", "config", "train")


@dataclass
class Checkpoint:
    """A gpf checkpoint (see the module doc); ``extra`` keeps further plain top-level keys."""
    format: str
    model_config: dict
    state_dict: dict
    meta: dict = field(default_factory=dict)
    attention: AttentionBlock | None = None
    dataset: dict | None = None
    shards: dict | None = None
    config: dict | None = None
    train: dict | None = None
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    origin: str = field(default="checkpoint", compare=False, repr=False)   # the file, for messages

    @property
    def kind(self) -> str:
        """``'stage1'`` or ``'stage2'``."""
        return _kind(self.format)

    @property
    def num_classes(self) -> int:
        """The model's outputs: score buckets N (stage 2), or 2 for a stage-1 high/low classifier."""
        if "num_classes" not in self.model_config:
            raise CheckpointError(f"{self.origin}: model_config lacks 'num_classes'; the file is damaged")
        return int(self.model_config["num_classes"])

    @property
    def scores(self) -> tuple[float, ...]:
        """The score of each bucket of the dataset the model was trained on (1..N when none was recorded).

        A stage-1 model predicts high/low, so its scores need not match its two outputs.
        """
        dataset = self.dataset or {}
        scores = self.model_config.get("scores") or dataset.get("scores")
        if scores is None:
            return tuple(float(s) for s in range(1, self.num_classes + 1))
        if self.kind == "stage2" and len(scores) != self.num_classes:
            raise CheckpointError(f"{self.origin} has {self.num_classes} score buckets but {len(scores)} "
                                  f"bucket scores ({list(scores)}); the file is damaged")
        return tuple(float(s) for s in scores)

    @property
    def threshold(self) -> float | None:
        """The high/low cut the model was trained with (None when unknown)."""
        value = self.model_config.get("threshold", (self.dataset or {}).get("threshold"))
        return None if value is None else float(value)

    @property
    def view_size(self) -> int | None:
        """The view size the model was trained on."""
        value = self.model_config.get("view_size") or (self.attention.view_size if self.attention else None)
        return None if value is None else int(value)

    @property
    def view_fit(self) -> str:
        """How the model takes views below its networks' minimum input (``pad`` | ``enlarge``,
        :func:`gpf.model.geometry.fit_to_backbone`); checkpoints written before gpf recorded it take the default
        (their views never needed it)."""
        from ..vocabulary import VIEW_FIT

        return self.model_config.get("view_fit") or VIEW_FIT

    @property
    def view_geometry(self) -> dict:
        """A stage-1 model's peripheral view rule as it recorded it: ``view_size``, ``view_round``,
        ``view_min_side``, ``view_fit`` (absent keys: not recorded, i.e. made before gpf 0.3.0)."""
        return {key: self.model_config[key] for key in ("view_size", "view_round", "view_min_side", "view_fit")
                if self.model_config.get(key) is not None}

    @property
    def split_spec(self) -> dict | None:
        """The train/val/test split a stage-1 model was trained with."""
        return (self.dataset or {}).get("split_spec") or self.model_config.get("split_spec")

    @property
    def shards_run(self) -> tuple[dict, int] | None:
        """The record of the run fields of the shards a stage-2 model was trained on, and the manifest format
        it is written in (format-1 records come from gpf 0.1.0 checkpoints), or None."""
        record = (self.shards or {}).get("run")
        if not isinstance(record, Mapping):
            return None
        return dict(record), int(self.shards.get("run_format", 1 if self.format_version == 1 else 2))

    @property
    def shards_seed(self) -> int:
        """The preprocess seed of the shards a stage-2 model was trained on (random crop positions)."""
        run = self.shards_run
        config = run[0].get("config") if run else None
        seed = config.get("seed", 0) if isinstance(config, Mapping) else 0
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0

    @property
    def digest(self) -> str:
        """:func:`state_dict_digest` of the model's weights."""
        return state_dict_digest(self.state_dict)

    # -- plain form
    def to_dict(self) -> dict:
        payload = {"format": self.format, "format_version": FORMAT_VERSION, "model_config": dict(self.model_config),
                   "state_dict": self.state_dict, "meta": dict(self.meta)}
        if self.attention is not None:
            payload["attention"] = self.attention.to_dict()
        for name in ("dataset", "shards", "config", "train"):
            if getattr(self, name) is not None:
                payload[name] = getattr(self, name)
        return {**self.extra, **payload}

    @classmethod
    def from_dict(cls, payload: Any, where: str = "checkpoint") -> "Checkpoint":
        """Read a payload of any readable version; :class:`CheckpointError` naming ``where`` otherwise."""
        fmt = payload.get("format") if isinstance(payload, Mapping) else None
        if fmt not in MADE_BY:
            raise CheckpointError(f"{where} is not a gpf checkpoint (no 'format' of {', '.join(MADE_BY)}); gpf "
                                  f"checkpoints are made by `gpf train stage1` and `gpf train stage2`. To start a "
                                  f"backbone from a plain state dict, give it as weights=PATH.", param="weights")
        version = payload.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            from .._version import __version__

            made_by = (payload.get("meta") or {}).get("gpf_version", "?") if isinstance(payload.get("meta"), Mapping) \
                else "?"
            advice = "upgrade gpf to read it" if isinstance(version, int) and version > FORMAT_VERSION else \
                "retrain it with this gpf"
            raise CheckpointError(f"{where} has format_version {version!r} (written by gpf {made_by}); this gpf "
                                  f"{__version__} reads format_version {', '.join(map(str, READABLE_VERSIONS))}: "
                                  f"{advice}")
        for key in ("model_config", "state_dict"):
            if not isinstance(payload.get(key), Mapping):
                raise CheckpointError(f"{where} ({fmt}) lacks its {key!r} dict; the file is damaged")
        _check_types(where, "model_config", payload["model_config"], {"num_classes": int},
                     required=fmt == FORMATS["stage2"])
        _check_types(where, "model_config", payload["model_config"],
                     {"view_size": int, "threshold": "number", "scores": (list, tuple), "variant": str,
                      "view_round": int, "view_min_side": int, "view_fit": str,
                      "backbone": str, "peripheral_backbone": str, "gif_hidden": (int, list, tuple),
                      "subnets": Mapping})
        for key in ("meta", "dataset", "shards", "config", "train"):
            if payload.get(key) is not None and not isinstance(payload.get(key), Mapping):
                raise CheckpointError(f"{where} ({fmt}): {key!r} is a {type(payload[key]).__name__}, not a dict; "
                                      "the file is damaged")
        attention = None
        if fmt == FORMATS["stage2"]:
            attention = AttentionBlock.from_dict(payload.get("attention"), where)
        dataset = dict(payload["dataset"]) if isinstance(payload.get("dataset"), Mapping) else None
        if version == 1 and payload.get("split_spec") is not None:
            dataset = dict(dataset or {})
            if dataset.get("split_spec") is None:
                dataset["split_spec"] = payload["split_spec"]
        optional = {name: dict(payload[name]) if isinstance(payload.get(name), Mapping) else None
                    for name in ("shards", "config", "train")}
        extra = {k: v for k, v in payload.items() if k not in _KNOWN_KEYS and k != "split_spec"}
        meta = dict(payload["meta"]) if isinstance(payload.get("meta"), Mapping) else {}
        if optional["shards"] is not None and version == 1:
            optional["shards"].setdefault("run_format", 1)    # the record keeps the manifest format it copies
        model_config = dict(payload["model_config"])
        if fmt == FORMATS["stage2"] and version < 3:
            model_config = _two_subnets(model_config)
        return cls(format=fmt, model_config=model_config, state_dict=dict(payload["state_dict"]),
                   meta=meta, attention=attention, dataset=dataset, extra=extra, format_version=version,
                   origin=str(where), **optional)


def _two_subnets(model_config: dict) -> dict:
    """A format-1/2 stage-2 model_config in format 3's terms: the one backbone is both subnets, W1 both branches'."""
    from ..vocabulary import DEFAULT_VARIANT, VARIANTS

    config = dict(model_config)
    config.setdefault("peripheral_backbone", config.get("backbone"))
    variant = VARIANTS.get(config.get("variant", DEFAULT_VARIANT))
    width = config.get("gif_hidden")
    if variant is not None and variant.columns == 1:
        config["gif_hidden"] = None
    elif isinstance(width, int):
        config["gif_hidden"] = [width, width]
    return config


# ----------------------------------------------------------------------------- files

def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically: temp file in the same folder, fsync, ``os.replace``.

    A crash or error leaves either the previous file or the new one, never a
    partial file. The payload must be plain (see :func:`check_plain`).
    """
    if not isinstance(checkpoint, Checkpoint):
        raise CheckpointError(f"save_checkpoint takes a Checkpoint, got {type(checkpoint).__name__}")
    if checkpoint.format not in MADE_BY:
        raise CheckpointError(f"unknown checkpoint format {checkpoint.format!r}; expected one of {', '.join(MADE_BY)}")
    payload = checkpoint.to_dict()
    check_plain(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: torch.save(payload, handle))
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
        raise CheckpointError(f"prefer must be 'best' or 'last', got {prefer!r}")
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


def load_checkpoint(path: str | os.PathLike, expect: str | None = None, map_location="cpu") -> Checkpoint:
    """Read and check a gpf checkpoint; ``expect`` = ``'stage1'`` or ``'stage2'`` refuses the other kind."""
    if expect is not None and expect not in FORMATS:
        raise CheckpointError(f"expect must be one of {', '.join(FORMATS)} or None, got {expect!r}")
    path = Path(path)
    checkpoint = Checkpoint.from_dict(safe_torch_load(path, "checkpoint", CheckpointError, map_location), str(path))
    if expect is not None and checkpoint.format != FORMATS[expect]:
        wanted = FORMATS[expect]
        raise CheckpointError(f"{path} is a {checkpoint.kind.replace('stage', 'stage-')} checkpoint (made by "
                              f"{MADE_BY[checkpoint.format]}), but a {expect.replace('stage', 'stage-')} checkpoint "
                              f"(made by {MADE_BY[wanted]}) is needed here")
    return checkpoint


# ----------------------------------------------------------------------------- payloads

def _data_config(view_size, threshold, scores) -> dict:
    return {"view_size": view_size, "threshold": threshold,
            "scores": list(scores) if scores is not None else None}


def stage1_checkpoint(model: nn.Module, *, view_size: int | None = None, threshold: float | None = None,
                      scores=None, extra_config: Mapping | None = None, meta: Mapping | None = None) -> Checkpoint:
    """Checkpoint of a stage-1 (attention) model: a ``PeripheralNet`` or an ImageNet ``Classifier``."""
    return Checkpoint(format=FORMATS["stage1"],
                      model_config={**model.config(), **_data_config(view_size, threshold, scores),
                                    **(extra_config or {})},
                      state_dict=cpu_state_dict(model), meta=dict(meta) if meta is not None else default_meta())


def attention_block(attention_model: nn.Module | Checkpoint, *, tau: float, eb_layer: str, contrastive: bool,
                    view_size: int) -> AttentionBlock:
    """The attention block of a stage-2 checkpoint from a model or a stage-1 checkpoint."""
    if isinstance(attention_model, nn.Module):
        config, state = attention_model.config(), cpu_state_dict(attention_model)
    else:
        config, state = dict(attention_model.model_config), attention_model.state_dict
    return AttentionBlock(stage1_state_dict=state, stage1_config=config, stage1_digest=state_dict_digest(state),
                          tau=float(tau), eb_layer=eb_layer, contrastive=bool(contrastive), view_size=int(view_size))


def stage2_checkpoint(model: nn.Module, attention: AttentionBlock, *, view_size: int | None = None,
                      threshold: float | None = None, scores=None, extra_config: Mapping | None = None,
                      meta: Mapping | None = None) -> Checkpoint:
    """Checkpoint of a stage-2 ``GPFNet``; ``attention`` from :func:`attention_block`."""
    return Checkpoint(format=FORMATS["stage2"],
                      model_config={**model.config(), **_data_config(view_size, threshold, scores),
                                    **(extra_config or {})},
                      state_dict=cpu_state_dict(model), attention=attention,
                      meta=dict(meta) if meta is not None else default_meta())


# ----------------------------------------------------------------------------- rebuilding

def _has_non_persistent_buffers(model: nn.Module) -> bool:
    return any(module._non_persistent_buffers_set for module in model.modules())


def instantiate(config: Mapping, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Build the model of ``config`` and load ``state_dict`` strictly, in eval mode.

    Parameters are allocated uninitialised (built on the ``meta`` device) and
    then filled from the state dict, so rebuilding VGG16 costs no random init.
    """
    from .gpf import build_model

    with torch.device("meta"):
        probe = build_model(config)
    if _has_non_persistent_buffers(probe):
        model = build_model(config)  # such buffers are not in the state dict: initialise for real
    else:
        model = probe.to_empty(device="cpu")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{source}: the state dict does not fit the model of its config "
                              f"({config.get('model')}, backbone {config.get('backbone')!r}): "
                              f"{detail[:300]}{' ...' if len(detail) > 300 else ''}; the file is damaged or "
                              "was written by another model") from exc
    return model.eval()


def _as_checkpoint(ckpt) -> Checkpoint:
    if isinstance(ckpt, (str, os.PathLike)):
        return load_checkpoint(ckpt)
    if not isinstance(ckpt, Checkpoint):
        raise CheckpointError("expected a gpf Checkpoint (from load_checkpoint) or its path")
    return ckpt


def model_from_checkpoint(ckpt) -> nn.Module:
    """The model a checkpoint (object or path) holds: ``PeripheralNet``/``Classifier`` or ``GPFNet``, eval mode."""
    checkpoint = _as_checkpoint(ckpt)
    return instantiate(checkpoint.model_config, checkpoint.state_dict,
                       source=f"{checkpoint.origin} ({checkpoint.format})")


def attention_model_from_checkpoint(ckpt) -> nn.Module:
    """The stage-1 attention model: a stage-1 checkpoint's model, or the one embedded in a stage-2 checkpoint.

    The embedded weights are checked against their recorded digest.
    """
    checkpoint = _as_checkpoint(ckpt)
    if checkpoint.attention is None:
        return model_from_checkpoint(checkpoint)
    block = checkpoint.attention
    return instantiate(block.stage1_config, block.verified_state_dict(),
                       source=f"the stage-1 model embedded in {checkpoint.origin}")
