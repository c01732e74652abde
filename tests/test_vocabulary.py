"""The names every room shares (gpf.vocabulary): the variant table, its errors, and library parameter -> CLI option.

The references: the paper's Table I (which models exist and what each sees),
the network GPFNet builds for each variant, the shard layout's member names, and
the options the ``gpf`` commands really have (walked from the click group).
"""
from __future__ import annotations

import re

import click
import pytest

from gpf import vocabulary
from gpf.errors import OptionError
from gpf.vocabulary import DEFAULT_VARIANT, VARIANT_NAMES, VARIANTS, cli_option, get_variant

#: Table I of the paper: name -> (table name, columns, second view, gated fusion, first view, frozen first
#: column). ``single`` and ``random`` as the paper ran them (IV-C: the warped photo, fine-tuned; a random
#: original-resolution patch), the frozen-column versions under names of their own.
TABLE_I = {
    "single": ("VGG16", 1, None, False, "warp", False),
    "single-periph": ("VGG16", 1, None, False, "periph", False),
    "single-frozen": ("VGG16", 1, None, False, "periph", True),
    "random": ("Random-VGG16", 2, "patch", False, "warp", False),
    "random-frozen": ("Random-VGG16", 2, "random", False, "periph", True),
    "pf": ("PF-CNN", 2, "fovea", False, "periph", True),
    "gpf": ("GPF-CNN", 2, "fovea", True, "periph", True),
}
ALL_NAMES = "single, single-periph, single-frozen, random, random-frozen, pf, gpf"


# ----------------------------------------------------------------------------- the variant table

def test_the_variants_of_table_i_in_its_order():
    assert VARIANT_NAMES == tuple(TABLE_I) and ", ".join(VARIANT_NAMES) == ALL_NAMES
    for name, row in TABLE_I.items():
        variant = get_variant(name)
        assert variant is VARIANTS[name] and variant.name == name
        assert (variant.table_name, variant.columns, variant.second_view, variant.gated, variant.first_view,
                variant.frozen) == row
        assert variant.description
    assert DEFAULT_VARIANT == "gpf"


def test_what_each_variant_needs_from_the_shards():
    needs = {name: (v.needs_attention, v.needs_random_crops, v.needs_warped, v.needs_original, v.member)
             for name, v in VARIANTS.items()}
    assert needs == {"single": (False, False, True, False, None), "single-periph": (False, False, False, False, None),
                     "single-frozen": (False, False, False, False, None),
                     "random": (False, False, True, True, "patch"),
                     "random-frozen": (False, True, False, False, "rand"),
                     "pf": (True, False, False, False, "fovea"), "gpf": (True, False, False, False, "fovea")}


def test_members_are_the_shard_members_the_reader_and_stage2_use():
    from gpf.shards.layout import FOVEA, REQUIRED_MEMBERS, rand_index, rand_member

    assert f"{VARIANTS['gpf'].member}.jpg" == FOVEA and FOVEA in REQUIRED_MEMBERS
    assert rand_member(0).startswith(VARIANTS["random-frozen"].member) and rand_index(rand_member(3)) == 3


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_the_network_of_each_variant_has_its_columns_and_gates(name):
    from gpf.model.gpf import GPFNet

    variant = get_variant(name)
    model = GPFNet("tiny", name, num_classes=3, branch_width=4, fusion_width=4)
    assert (model.foveal is not None) == (variant.columns == 2) == model.needs_fovea
    assert (model.gif is not None) == variant.gated
    assert model.fusion.fc.in_features == variant.columns * 4
    assert model.fovea_source == {"fovea": "attention", "random": "random", "patch": "patch",
                                  None: None}[variant.second_view]
    assert model.first_view == variant.first_view


def test_the_rooms_use_the_same_names_and_default():
    from gpf.model.gpf import VARIANTS as MODEL_VARIANTS
    from gpf.train.config import VARIANTS as CONFIG_VARIANTS
    from gpf.train.config import Stage2Config

    assert tuple(MODEL_VARIANTS) == tuple(CONFIG_VARIANTS) == VARIANT_NAMES
    assert Stage2Config().variant == DEFAULT_VARIANT


@pytest.mark.parametrize("typo, close", [("gpff", "gpf"), ("sngle", "single"), ("randm", "random"), ("PF", None),
                                         ("vgg16", None)])
def test_an_unknown_variant_lists_all_and_suggests_a_close_match(typo, close):
    with pytest.raises(OptionError) as info:
        get_variant(typo)
    error = info.value
    assert error.param == "variant" and isinstance(error, ValueError)
    message = str(error)
    assert message.startswith(f"unknown variant {typo!r}") and message.endswith(f"one of: {ALL_NAMES}")
    if close is None:
        assert "did you mean" not in message
    else:
        assert f"(did you mean {close!r}?)" in message


# ----------------------------------------------------------------------------- CLI options

def cli_params(kind) -> dict[str, set[str]]:
    """``{command path: names}`` of every ``gpf`` command: its ``--options`` (kind click.Option) or
    its arguments as the help shows them (kind click.Argument)."""
    from gpf.cli.main import cli

    found: dict[str, set[str]] = {}

    def walk(command, path):
        ctx = click.Context(command, info_name=path)
        names = set()
        for param in command.params:
            if isinstance(param, kind):
                names |= {*param.opts, *param.secondary_opts} if kind is click.Option else {param.human_readable_name}
        found[path] = names
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                walk(command.get_command(ctx, sub), f"{path} {sub}")

    walk(cli, "gpf")
    return found


@pytest.mark.parametrize("param, option", [("view_size", "--view-size"), ("max_failure_rate", "--max-failure-rate"),
                                           ("tau", "--tau"), ("random_crops", "--random-crops")])
def test_a_parameter_is_its_option_with_dashes(param, option):
    assert cli_option(param) == option


@pytest.mark.parametrize("param, option", [("shard_dir", "--shards"), ("num_workers", "--workers"),
                                           ("pixel_limit", "--max-pixels"), ("progress", "--quiet"),
                                           ("drop_last", "--batch-size"), ("root", "ROOT")])
def test_the_exceptions_name_the_option_the_cli_has(param, option):
    assert cli_option(param) == option


def test_every_option_the_vocabulary_names_exists_in_the_cli():
    options = set().union(*cli_params(click.Option).values())
    assert len(options) > 30
    named = {param: re.findall(r"--[a-z][a-z0-9-]*", cli_option(param)) for param in vocabulary._CLI_OPTIONS}
    missing = {param: opt for param, opts in named.items() for opt in opts if opt not in options}
    assert not missing, f"cli_option names options no gpf command has: {missing}"
    assert all(named[p] for p in named if p not in ("root", "dataset")), named
    assert named["attention_model"] == ["--stage1", "--backbone", "--weights"]


@pytest.mark.parametrize("param", ["min_size", "image_pattern", "subsampling", "train_size", "n_buckets", "scores",
                                   "reduction", "r", "rank", "world_size", "members", "shuffle_buffer"])
def test_a_parameter_no_option_sets_has_no_option_not_an_invented_one(param):
    assert cli_option(param) is None


@pytest.mark.parametrize("message, param, words", [
    ("no image column; pass path_column= / id_column=; columns: a, b", "path_column",
     "no image column; pass --path-column / --id-column; columns: a, b"),
    ("ambiguous count columns; pass count_columns=[...]", "count_columns", "ambiguous count columns; pass --count-columns"),
    ("backbone 'tiny' has no ImageNet weights; use weights='none' or weights=PATH", None,
     "backbone 'tiny' has no ImageNet weights; use --weights none or --weights PATH"),
    ("val_size=500 is not possible with 47 rows", "val_size", "--val-size 500 is not possible with 47 rows"),
    ("x.jpg: 60x50 is over the limit; raise max_pixels if you trust the file", "max_pixels",
     "x.jpg: 60x50 is over the limit; raise --max-pixels if you trust the file"),
    ("threshold=11 is outside the score range 1..10; set threshold", "threshold",
     "--threshold 11 is outside the score range 1..10; set --threshold"),
    ("the split has 5 samples; lower batch_size to at most 5", "batch_size",
     "the split has 5 samples; lower --batch-size to at most 5"),
    # kept: names without an option, Python flags, one-word names outside the advice, paths and file names
    ("train_size + min_size; image_pattern 'x' is bad", None, "train_size + min_size; image_pattern 'x' is bad"),
    ("pass overwrite=True to replace it", None, "pass overwrite=True to replace it"),
    ("device 'tpu' is not a device; use one of auto | cpu", "device", "device 'tpu' is not a device; use one of auto | cpu"),
    ("data/val_size/a.jpg and run/batch_size.csv: --seed=3", None, "data/val_size/a.jpg and run/batch_size.csv: --seed=3"),
])
def test_cli_text_names_each_parameter_by_its_option(message, param, words):
    assert vocabulary.cli_text(message, param) == words


def test_root_is_the_argument_of_the_commands_that_read_a_dataset():
    arguments = cli_params(click.Argument)
    with_root = sorted(path for path, names in arguments.items() if cli_option("root") in names)
    assert with_root == ["gpf preprocess ava", "gpf preprocess folder", "gpf preprocess photonet",
                         "gpf train stage1"]


def test_defaults_are_the_papers():
    assert (vocabulary.TAU, vocabulary.VIEW_SIZE, vocabulary.EMD_R_TRAIN, vocabulary.EMD_R_EVAL) == (0.7, 224, 2, 1)
    assert vocabulary.SPLITS == ("train", "val", "test")
