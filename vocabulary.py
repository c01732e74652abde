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
from dataclasses import dataclass

# ----------------------------------------------------------------------------- paper constants and defaults

TAU = 0.7                  # share of the attention the foveal crop holds (paper Eq. 4, section III-A)
VIEW_SIZE = 224            # peripheral longest side and foveal side (section III)
JPEG_QUALITY = 95          # stored views are encoded by gpf at this quality, never the writer's default
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

# Parameters whose CLI option is not simply ``--`` + the name with '-' for '_'.
_CLI_OPTION_EXCEPTIONS = {
    "root": "ROOT",
    "dataset": "the dataset kind (ava | photonet | folder)",
    "shard_dir": "--shards",
    "checkpoint": "--checkpoint",
    "num_workers": "--workers",
    "drop_last": "--batch-size",          # the CLI always drops the last partial batch when training
    "progress": "--quiet",
    "attention_model": "--stage1 or --backbone/--weights",
    "pixel_limit": "--max-pixels",
}


def cli_option(param: str) -> str:
    """How the CLI spells the library parameter ``param`` (``view_size`` -> ``--view-size``)."""
    return _CLI_OPTION_EXCEPTIONS.get(param, "--" + param.replace("_", "-"))
