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

    ``columns``: 1 or 2. ``first_view``: what the first (global) column sees — the
    aspect-kept peripheral view (``periph``) or the whole photo warped to a
    view-size square (``warp``, section IV-C: "warp the original image to 224 x
    224"). ``frozen``: the first column is the stage-1 network, frozen (paper
    IV-B, the two-step training of PF/GPF-CNN); otherwise it is the backbone
    fine-tuned from ``--weights``. ``second_view``: what the second column sees —
    the stored attention crop (``fovea``), one of the K stored random crops
    (``random``), a fresh view-size patch of the original-resolution photo each
    time a sample is seen (``patch``, Random-VGG16 as the paper ran it) or
    nothing. ``gated``: GIF (Eq. 5-8) or plain concatenation.
    """
    name: str
    table_name: str
    columns: int
    second_view: str | None
    gated: bool
    description: str
    first_view: str = "periph"
    frozen: bool = True

    @property
    def member(self) -> str | None:
        """The batch entry the second column reads (``fovea``, ``rand``, ``patch``; None for one column)."""
        return {"fovea": "fovea", "random": "rand", "patch": "patch", None: None}[self.second_view]

    @property
    def needs_attention(self) -> bool:
        """Whether the second view is the attention crop (so the attention model must match)."""
        return self.second_view == "fovea"

    @property
    def needs_random_crops(self) -> bool:
        return self.second_view == "random"

    @property
    def needs_warped(self) -> bool:
        """Whether the shards must store the warped whole photo (``warp.jpg``, ``--store-warped``)."""
        return self.first_view == "warp"

    @property
    def needs_original(self) -> bool:
        """Whether the shards must store the original-resolution photo (``orig.jpg``, ``--store-original``)."""
        return self.second_view == "patch"


VARIANTS = {v.name: v for v in (
    Variant("single", "VGG16", 1, None, False,
            "the backbone fine-tuned on the whole photo warped to a view-size square (Table I 'VGG16', "
            "as the paper ran it)", first_view="warp", frozen=False),
    Variant("single-periph", "VGG16", 1, None, False,
            "the backbone fine-tuned on the aspect-kept peripheral view (Table I 'VGG16' without the warp)",
            frozen=False),
    Variant("single-frozen", "VGG16", 1, None, False,
            "a head over the frozen stage-1 peripheral descriptor (gpf <= 0.2 'single')"),
    Variant("random", "Random-VGG16", 2, "patch", False,
            "warped whole photo + a fresh random view-size patch of the original-resolution photo, both "
            "columns fine-tuned, concatenated (Table I 'Random-VGG16', as the paper ran it)",
            first_view="warp", frozen=False),
    Variant("random-frozen", "Random-VGG16", 2, "random", False,
            "frozen stage-1 peripheral view + one of the K stored random crops, concatenated "
            "(gpf <= 0.2 'random')"),
    Variant("pf", "PF-CNN", 2, "fovea", False,
            "peripheral view + attention crop, concatenated, no gates (Table I 'PF-CNN')"),
    Variant("gpf", "GPF-CNN", 2, "fovea", True,
            "peripheral view + attention crop with gated information fusion (Table I 'GPF-CNN')"),
)}
#: What a variant name meant before the baselines were run as the paper ran them (gpf <= 0.2):
#: a checkpoint that does not record its first view is read under the new name.
LEGACY_VARIANT_NAMES = {"single": "single-frozen", "random": "random-frozen"}
VARIANT_NAMES = tuple(VARIANTS)          # Table I order: single(s), random(s), pf, gpf
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
        "jpeg_quality", "random_crops", "store_features", "store_warped", "store_original", "max_pixels",
        "max_failure_rate", "overwrite",
        "num_nodes", "node_rank", "stage1", "backbone", "weights", "device", "seed", "out",
        # the dataset options of preprocess and train stage1
        "val_size", "test_size", "split_seed", "image_root", "threshold", "path_column", "id_column",
        "count_columns",
        # train stage1 / stage2 (docs/training.md: every config key is an option)
        "resume", "epochs", "lr", "lr_step", "lr_gamma", "momentum", "weight_decay", "patience",
        "limit_train_batches", "log_interval", "amp", "compile", "tensorboard", "branch_width", "fusion_width",
        "dropout",
        "emd_r", "variant", "peripheral_weights", "use_features", "train_peripheral", "peripheral_backbone",
        "gif_width",
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
    "gif_hidden": "--gif-width",
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
