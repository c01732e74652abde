"""The names and defaults every room shares, each defined once.

* Paper constants and shared defaults (tau, view size, JPEG quality, ...): the
  config dataclasses take their defaults from here, and the CLI takes its
  defaults from the config dataclasses (:func:`gpf.cli.common.config_default`).
* The variant table: the four models of the paper's Table I and what each needs
  from the shards.
* Library parameter -> CLI option: library errors name the parameter
  (:class:`gpf.errors.OptionError.param`), and the CLI words it as its option.

No imports beyond the standard library: every room may import this module.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

# ----------------------------------------------------------------------------- paper constants and defaults

TAU = 0.7                  # share of the attention the foveal crop holds (paper Eq. 4, section III-A)
VIEW_SIZE = 224            # peripheral longest side and foveal side (section III)
JPEG_QUALITY = 95          # stored views are encoded by gpf at this quality, never the writer's default
JPEG_CHROMA_SUBSAMPLING = "4:2:0"  # ... and this chroma subsampling (encode_jpeg's default)
#: The peripheral view's short side is rounded to a multiple of this many pixels (docs/images.md,
#: "Views"): 8 keeps the aspect within 4 px, tiles every built-in default EB layer exactly and keeps
#: the number of view shapes (shape buckets) small. Shards of manifest format 1/2 used the attention
#: backbone's stride instead.
VIEW_ROUND = 8
#: How a view whose short side is below a network's minimum input side is fitted to it
#: (gpf.model.geometry.fit_views): padded with the network's mean colour (the default: as good as
#: enlarging on the fine-detail task and cheaper, docs/images.md), or enlarged (aspect kept).
VIEW_FITS = ("pad", "enlarge")
VIEW_FIT = "pad"
EMD_R_TRAIN = 2            # EMD loss exponent for training (section III-C)
EMD_R_EVAL = 1             # EMD reported in Table I
SAMPLES_PER_SHARD = 1000
PREPROCESS_BATCH_SIZE = 32
#: Largest accepted width x height, checked on the header before any pixel is
#: decoded. 100 MP covers the largest common camera sensors; an RGB image this
#: size needs 300 MB once decoded.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_FAILURE_RATE = 0.05    # share of images a preprocess run may lose before it exits non-zero
SEED = 0
DEVICE = "auto"
DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- the variants (Table I)

@dataclass(frozen=True)
class Variant:
    """One model of the paper's Table I and what it needs.

    ``columns``: 1 (peripheral only) or 2; ``second_view``: what the second
    column sees — the stored attention crop (``fovea``), one of the stored random
    crops (``random``) or nothing; ``gated``: GIF (Eq. 5-8) or plain
    concatenation; ``member``: the shard member the second column reads.
    """
    name: str
    table_name: str
    columns: int
    second_view: str | None
    gated: bool
    description: str

    @property
    def member(self) -> str | None:
        return {"fovea": "fovea", "random": "rand", None: None}[self.second_view]

    @property
    def needs_attention(self) -> bool:
        """Whether the second view is the attention crop (so the attention model must match)."""
        return self.second_view == "fovea"

    @property
    def needs_random_crops(self) -> bool:
        return self.second_view == "random"


VARIANTS = {v.name: v for v in (
    Variant("single", "VGG16", 1, None, False, "one column on the peripheral view (Table I 'VGG16')"),
    Variant("random", "Random-VGG16", 2, "random", False,
            "peripheral view + a random view-size crop, concatenated (Table I 'Random-VGG16')"),
    Variant("pf", "PF-CNN", 2, "fovea", False,
            "peripheral view + attention crop, concatenated, no gates (Table I 'PF-CNN')"),
    Variant("gpf", "GPF-CNN", 2, "fovea", True,
            "peripheral view + attention crop with gated information fusion (Table I 'GPF-CNN')"),
)}
VARIANT_NAMES = tuple(VARIANTS)          # Table I order: single, random, pf, gpf
DEFAULT_VARIANT = "gpf"


def get_variant(name: str) -> Variant:
    """The variant called ``name``; an error listing the allowed names otherwise."""
    from .errors import OptionError

    if name not in VARIANTS:
        close = difflib.get_close_matches(str(name), VARIANT_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise OptionError(f"unknown variant {name!r}{hint}; one of: {', '.join(VARIANT_NAMES)}", param="variant")
    return VARIANTS[name]


# ----------------------------------------------------------------------------- library parameter -> CLI option

# Every library parameter a gpf option sets, and that option. A parameter not
# listed here has no option (``min_size``, ``image_pattern``, ``subsampling``,
# ``train_size``, ...): :func:`cli_option` gives None, never an invented option.
_CLI_OPTIONS = {
    # the option is the name with dashes
    **{name: "--" + name.replace("_", "-") for name in (
        # preprocess
        "view_size", "tau", "eb_layer", "contrastive", "samples_per_shard", "split", "limit", "batch_size",
        "jpeg_quality", "random_crops", "store_features", "max_pixels", "max_failure_rate", "overwrite",
        "num_nodes", "node_rank", "stage1", "backbone", "weights", "device", "seed", "out",
        # the dataset options of preprocess and train stage1
        "val_size", "test_size", "split_seed", "image_root", "threshold", "path_column", "id_column",
        "count_columns",
        # train stage1 / stage2 (docs/training.md: every config key is an option)
        "resume", "epochs", "lr", "lr_step", "lr_gamma", "momentum", "weight_decay", "patience",
        "limit_train_batches", "log_interval", "amp", "compile", "tensorboard", "branch_width", "fusion_width",
        "dropout",
        "emd_r", "variant", "peripheral_weights", "use_features", "train_peripheral",
        # evaluate, predict, attention
        "checkpoint", "by_category", "allow_attention_mismatch")},
    # the option has another name
    "root": "ROOT",
    "dataset": "the dataset kind (ava | photonet | folder)",
    "shard_dir": "--shards",
    "shards": "--shards",
    "num_workers": "--workers",
    "workers": "--workers",
    "drop_last": "--batch-size",          # the CLI always drops the last partial batch when training
    "progress": "--quiet",
    "attention_model": "--stage1 or --backbone/--weights",
    "pixel_limit": "--max-pixels",
    "config_file": "--config",
}


def cli_option(param: str) -> str | None:
    """How the CLI spells the library parameter ``param`` (``view_size`` -> ``--view-size``);
    None when no gpf option sets it."""
    return _CLI_OPTIONS.get(param)


# ``name=VALUE`` (Python keyword syntax) of a parameter; VALUE may be quoted, ``[...]`` or ``...``.
_KEYWORD = re.compile(r"(?<![\w./-])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|\[\.\.\.\]|\.\.\.|[^\s,;)]*)")
# A snake_case identifier: unmistakably a Python name (not part of a path, file or option name).
_SNAKE = re.compile(r"(?<![\w./-])[a-z][a-z0-9]*(?:_[a-z0-9]+)+(?![\w/-]|\.\w)")
# The neutral advice forms the library writes (``set path_column``, ``lower batch_size``).
_ADVICE_VERBS = ("set", "lower", "raise", "pass", "use", "give", "change", "with", "drop", "add")


def cli_text(message: str, param: str | None = None) -> str:
    """``message`` of a library error as the CLI words it: each parameter that has an option is named as it.

    * ``name=VALUE`` (a keyword argument) -> ``--name VALUE`` (``--name`` for ``[...]``, ``...`` or
      an empty value; ``name=True``/``False`` stay), for every parameter with an option;
    * a snake_case parameter name (``path_column``) -> its option (``--path-column``);
    * ``param``, the error's own parameter, also when it is one word, after an advice verb
      (``set threshold`` -> ``set --threshold``).

    Names without an option stay as they are (the CLI never reaches those errors).
    """
    def keyword(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        option = cli_option(name)
        if option is None or not option.startswith("--"):
            return match.group(0)
        if value in ("True", "False"):       # a Python flag: the option takes no value, keep the API's words
            return match.group(0)
        if value in ("", "[...]", "..."):
            return option
        return f"{option} {value.strip(chr(39) + chr(34))}"

    def snake(match: re.Match) -> str:
        option = cli_option(match.group(0))
        return option if option is not None and option.startswith("--") else match.group(0)

    text = _KEYWORD.sub(keyword, message)
    text = _SNAKE.sub(snake, text)
    option = cli_option(param) if param else None
    if option is not None and option.startswith("--") and "_" not in param:
        verbs = "|".join(_ADVICE_VERBS)
        text = re.sub(rf"\b({verbs}) {re.escape(param)}\b", lambda m: f"{m.group(1)} {option}", text)
    return text
