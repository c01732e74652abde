"""Training configuration: the paper's schedule as defaults, YAML files, resume rules.

Defaults follow section IV-B of the paper ("Both the two steps adopt the SGD
optimization algorithm. The minibatch samples 64 images ... The momentum is 0.9.
The initial learning rate is set to 0.01 and reduced by a factor of 10 every 10
epochs. The training continues until the validation loss reaches a plateau for
10 epochs.").

A config is resolved from, lowest precedence first: the dataclass defaults, the
config saved in the run being resumed, a YAML file, explicit overrides (the CLI
passes only the options the user typed). The resolved config is written to the
run folder and into every checkpoint.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .. import vocabulary
from ..errors import GPFError
from ..vocabulary import DEFAULT_MAX_PIXELS

VARIANTS = vocabulary.VARIANT_NAMES
DEVICE_HELP = vocabulary.DEVICE_CHOICES


class ConfigError(GPFError):
    """A configuration value or file that cannot be used; the message says which and why."""


@dataclass
class TrainConfig:
    """Options shared by both stages (paper section IV-B defaults)."""
    out: str | None = None            # run folder (checkpoints, logs, config.yaml)
    backbone: str | None = None       # registry name (gpf models)
    weights: str = "imagenet"         # initial weights of the trained subnet: imagenet | PATH | none
    epochs: int = 50                  # upper bound; early stopping usually ends the run first
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0         # the paper states none
    batch_size: int = 64              # global: split across DDP ranks
    lr_step: int = 10                 # StepLR step_size (epochs)
    lr_gamma: float = 0.1             # StepLR gamma
    patience: int = 10                # epochs without a validation-loss improvement before stopping
    workers: int | None = None        # loader processes per rank (None: up to 4, fixed at the start)
    seed: int = vocabulary.SEED
    device: str = vocabulary.DEVICE
    amp: bool | None = None           # None = on for CUDA (bf16 if supported, else fp16), off on CPU
    compile: bool = False
    limit_train_batches: int | None = None   # cap on steps per epoch (smoke runs, benchmarks)
    log_interval: int = 50            # steps between progress/NaN checks
    tensorboard: bool = True          # TensorBoard scalars when tensorboard is importable
    progress: bool = True
    resume: str | None = None         # run folder (or checkpoint file) to continue


@dataclass
class Stage1Config(TrainConfig):
    """``gpf train stage1``: the peripheral subnet as a high/low classifier on raw images."""
    dataset: str | None = None        # ava | photonet | folder
    root: str | None = None
    dataset_options: dict = field(default_factory=dict)   # open_dataset keywords (val_size, seed, ...)
    view_size: int = vocabulary.VIEW_SIZE  # longest side of the peripheral view (paper IV-B)
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb limit, as every command
    view_fit: str = vocabulary.VIEW_FIT   # internal: views below the backbone's minimum input: pad | enlarge


@dataclass
class Stage2Config(TrainConfig):
    """``gpf train stage2``: foveal subnet + fusion on preprocessed shards, EMD loss (r=2)."""
    shards: str | None = None
    variant: str = vocabulary.DEFAULT_VARIANT   # see gpf.vocabulary.VARIANTS
    stage1: str | None = None         # stage-1 checkpoint or run folder: the attention model (and peripheral init)
    peripheral_backbone: str | None = None   # the peripheral subnet (default: the network that made the shards)
    peripheral_weights: str | None = None   # peripheral init instead of the stage-1 model: imagenet | PATH | none
    train_peripheral: bool = False    # fine-tune the peripheral too (the paper freezes it)
    use_features: str = "auto"        # stored peripheral descriptors: auto | yes | no
    emd_r: int = vocabulary.EMD_R_TRAIN
    branch_width: int = 2048          # F_c of Table II (per-column FC width)
    fusion_width: int = 4096          # FC of Table II
    gif_width: int | list | None = None   # GIF W1: one for both branches or [peripheral, foveal] (default: each subnet's)
    dropout: float = 0.5              # after each hidden FC layer (the paper does not say; VGG uses 0.5)
    view_fit: str = vocabulary.VIEW_FIT   # internal: views below a column's minimum input: pad | enlarge
    cache_dir: str | None = None      # shards at a URL: local folder keeping verified tars for later epochs
    cache_max_gb: float = 20.0        # size bound of cache_dir (least recently used tars are removed first)


# Keys a resume may change: they decide where and how fast a run goes, not what it computes.
# (``workers`` is not among them: the data order of an epoch depends on it.)
# Data locations (root, shards, stage1) may move: a resume checks the data itself instead
# (stage 1: the dataset's split_spec; stage 2: the manifest and shard checksums).
RESUME_MUTABLE_KEYS = frozenset({
    "out", "resume", "device", "amp", "compile", "progress", "tensorboard",
    "log_interval", "epochs", "patience", "root", "shards", "stage1", "cache_dir", "cache_max_gb",
})
#: Keys that may hold a URL: written to config.yaml and checkpoints without credentials or a signed
#: URL's query string (:func:`gpf.shards.storage.public_url`).
LOCATION_KEYS = ("root", "shards", "stage1", "weights", "peripheral_weights", "out", "resume", "cache_dir")
USE_FEATURES_CHOICES = ("auto", "yes", "no")


def config_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def check_keys(data: Mapping[str, Any], cls: type, source: str) -> None:
    """Refuse keys that are not fields of ``cls``, naming each and listing the allowed ones."""
    allowed = config_keys(cls)
    unknown = [k for k in data if k not in allowed]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(hints)}. Allowed keys: {', '.join(allowed)}")


def load_yaml(path: str | Path, cls: type) -> dict:
    """Keys of a YAML config file, checked against ``cls``; ``-`` and ``_`` are both accepted."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys to values, "
                          f"got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    check_keys(data, cls, str(path))
    return data


def build_config(cls: type, *, yaml_path: str | Path | None = None,
                 overrides: Mapping[str, Any] | None = None,
                 saved: Mapping[str, Any] | None = None):
    """A validated ``cls`` from defaults < ``saved`` < YAML file < ``overrides``."""
    values: dict[str, Any] = {}
    if saved:
        values.update({k: v for k, v in saved.items() if k in config_keys(cls)})
    if yaml_path is not None:
        values.update(load_yaml(yaml_path, cls))
    if overrides:
        check_keys(overrides, cls, "options")
        values.update(overrides)
    cfg = cls(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Check types and ranges; raise one ConfigError naming every bad value."""
    problems: list[str] = []

    def need(ok: bool, text: str) -> None:
        if not ok:
            problems.append(text)

    for name in ("epochs", "batch_size", "lr_step", "log_interval"):
        value = getattr(cfg, name)
        need(_is_int(value) and value >= 1, f"{name} must be a positive integer, got {value!r}")
    for name in ("patience", "seed"):
        value = getattr(cfg, name)
        need(_is_int(value) and value >= 0, f"{name} must be an integer >= 0, got {value!r}")
    need(cfg.workers is None or (_is_int(cfg.workers) and cfg.workers >= 0),
         f"workers must be an integer >= 0 or null, got {cfg.workers!r}")
    for name in ("lr", "momentum", "weight_decay", "lr_gamma"):
        value = getattr(cfg, name)
        need(_is_number(value) and value >= 0, f"{name} must be a number >= 0, got {value!r}")
    if _is_number(cfg.lr):
        need(cfg.lr > 0, f"lr must be positive, got {cfg.lr!r}")
    need(cfg.limit_train_batches is None or (_is_int(cfg.limit_train_batches)
                                             and cfg.limit_train_batches >= 1),
         f"limit_train_batches must be a positive integer or null, got {cfg.limit_train_batches!r}")
    need(cfg.amp is None or isinstance(cfg.amp, bool), f"amp must be true, false or null, got {cfg.amp!r}")
    for name in ("compile", "tensorboard", "progress"):
        need(isinstance(getattr(cfg, name), bool), f"{name} must be true or false, got {getattr(cfg, name)!r}")
    need(isinstance(cfg.device, str) and bool(cfg.device), f"device must be {DEVICE_HELP}, got {cfg.device!r}")
    need(cfg.backbone is None or isinstance(cfg.backbone, str), f"backbone must be a name, got {cfg.backbone!r}")
    from ..shards.storage import is_url, public_location_text

    for name in ("out", "resume", "cache_dir"):
        value = getattr(cfg, name, None)
        need(not is_url(value), f"{name} {public_location_text(value)} is a URL, but the run folder and the cache "
             "are local (checkpoints are written with fsync + rename): train into a local folder and copy it to the "
             "store afterwards (gpf evaluate/predict read a checkpoint at a URL)")
    if isinstance(cfg, (Stage1Config, Stage2Config)):
        need(cfg.view_fit in vocabulary.VIEW_FITS,
             f"view_fit must be one of {', '.join(vocabulary.VIEW_FITS)}; got {cfg.view_fit!r}")
    if isinstance(cfg, Stage1Config):
        need(cfg.dataset in ("ava", "photonet", "folder"),
             f"dataset must be one of ava, photonet, folder; got {cfg.dataset!r}")
        need(_is_int(cfg.view_size) and cfg.view_size >= 8, f"view_size must be an integer >= 8, got {cfg.view_size!r}")
        need(isinstance(cfg.dataset_options, dict), "dataset_options must be a mapping")
        need(_is_int(cfg.max_pixels) and cfg.max_pixels > 0, f"max_pixels must be positive, got {cfg.max_pixels!r}")
    if isinstance(cfg, Stage2Config):
        need(cfg.variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)}; got {cfg.variant!r}")
        need(cfg.use_features in USE_FEATURES_CHOICES,
             f"use_features must be one of {', '.join(USE_FEATURES_CHOICES)}; got {cfg.use_features!r}")
        need(_is_int(cfg.emd_r) and cfg.emd_r >= 1, f"emd_r must be a positive integer, got {cfg.emd_r!r}")
        for name in ("branch_width", "fusion_width"):
            value = getattr(cfg, name)
            need(_is_int(value) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        need(_is_number(cfg.dropout) and 0 <= cfg.dropout < 1, f"dropout must be in [0, 1), got {cfg.dropout!r}")
        need(cfg.peripheral_backbone is None or isinstance(cfg.peripheral_backbone, str),
             f"peripheral_backbone must be a name, got {cfg.peripheral_backbone!r}")
        widths = cfg.gif_width if isinstance(cfg.gif_width, list) else [cfg.gif_width]
        need(cfg.gif_width is None or (len(widths) in (1, 2) and all(_is_int(w) and w >= 1 for w in widths)),
             f"gif_width must be a positive integer or a [peripheral, foveal] pair of them, got {cfg.gif_width!r}")
        need(isinstance(cfg.train_peripheral, bool),
             f"train_peripheral must be true or false, got {cfg.train_peripheral!r}")
        need(_is_number(cfg.cache_max_gb) and cfg.cache_max_gb > 0,
             f"cache_max_gb must be a positive number, got {cfg.cache_max_gb!r}")
    if problems:
        raise ConfigError("invalid training config: " + "; ".join(problems))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_dict(cfg: TrainConfig) -> dict:
    """Plain types only (safe for YAML, JSON and ``weights_only`` checkpoints); URLs without their secrets."""
    from ..shards.storage import public_location_text

    data = dataclasses.asdict(cfg)
    return {k: public_location_text(v) if k in LOCATION_KEYS else v for k, v in data.items()}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       ignore: frozenset[str] = RESUME_MUTABLE_KEYS) -> list[str]:
    """``'key: saved -> current'`` for every key that matters and differs."""
    keys = sorted((set(saved) | set(current)) - ignore)
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


#: Keys added after runs were saved without them, and the value that gives what those runs computed.
LATER_KEYS = {"view_fit": vocabulary.VIEW_FIT}   # gpf 0.3.0; older runs never fitted a view (none was too small)


def check_resume_compatible(saved: Mapping[str, Any], cfg: TrainConfig, run: str | Path) -> None:
    """Refuse to resume ``run`` with a config that changes what the run computes."""
    current = to_dict(cfg)
    diffs = config_differences({**{k: v for k, v in LATER_KEYS.items() if k in current}, **saved}, current)
    if diffs:
        raise ConfigError(
            f"cannot resume {run}: the config differs from the one it was started with "
            f"({'; '.join(diffs)}). Resume with the original values, or start a new run with "
            f"another --out. Only {', '.join(sorted(RESUME_MUTABLE_KEYS - {'out', 'resume'}))} "
            "may change on resume.")


def write_config(cfg: TrainConfig, run_dir: Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the resolved config (and ``extra`` facts such as the world size) to ``run_dir/config.yaml``."""
    import yaml

    from ..fsutil import atomic_write_text

    data = {"config": to_dict(cfg)}
    if extra:
        data.update(extra)
    path = Path(run_dir) / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path
