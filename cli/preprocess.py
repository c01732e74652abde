"""``gpf preprocess ava|photonet|folder``: the stage-1 pass that writes shards."""
from __future__ import annotations

import sys

import click

from .common import (Location, collect_dataset_options, command_line, config_default, dataset_options,
                     engine_options, error_text, friendly_errors, on_interrupt, pop_engine_options,
                     storage_options)
from .. import vocabulary
from ..pipeline.preprocess import PreprocessConfig
from ..vocabulary import DEVICE_CHOICES, SPLITS


def _default(name: str):
    return config_default(PreprocessConfig, name)


def _preprocess_options_for(kind: str):
    """The preprocess options for a dataset KIND (the folder-only ones for ``folder`` alone)."""
    return lambda fn: _preprocess_options(fn, folder=kind == "folder")


def _preprocess_options(fn, folder: bool = True):
    options = [
        click.option("--out", "out", required=True, type=Location(file_okay=False),
                     help="Folder or URL (s3://bucket/prefix ...) for the shards, meta/ Parquet and manifest.json."),
        click.option("--stage1", type=Location(exists=True),
                     help="Stage-1 checkpoint (file or run folder, local or a URL) from `gpf train stage1`."),
        click.option("--backbone", help="Without --stage1: attention from this ImageNet classifier."),
        click.option("--weights", default=_default("weights"), show_default=True,
                     help="With --backbone: imagenet | PATH | URL | none."),
        click.option("--tau", type=float, default=_default("tau"), show_default=True,
                     help="Share of the attention the crop must hold (paper Eq. 4)."),
        click.option("--view-size", type=int, default=None,
                     help="Longest side of the peripheral view and side of the foveal view "
                          f"(default: the one the --stage1 model was trained with, else {vocabulary.VIEW_SIZE}; "
                          "another than the stage-1 model's is refused)."),
        click.option("--eb-layer", default=None, help="Module name where the EB map is read (default: the backbone's)."),
        click.option("--contrastive", is_flag=True, help="Contrastive Excitation Backprop."),
        click.option("--samples-per-shard", type=int, default=_default("samples_per_shard"), show_default=True,
                     help="Images per shard (tar); smaller shards give more loader workers something to read."),
        click.option("--split", type=click.Choice([*SPLITS, "all"]), default=_default("split"),
                     show_default=True, help="Which split to preprocess (stage 2 needs train and val)."),
        click.option("--limit", type=int, default=None, help="At most this many images per split (a seeded sample)."),
        click.option("--workers", type=int, default=_default("workers"), show_default=True,
                     help="Decode/encode threads (0 = one per core); with --engine ray see --ray-task-cpus."),
        click.option("--batch-size", type=int, default=_default("batch_size"), show_default=True,
                     help="Images per attention (EB) forward/backward pass."),
        click.option("--device", default=_default("device"), show_default=True, help=DEVICE_CHOICES),
        click.option("--jpeg-quality", type=int, default=_default("jpeg_quality"), show_default=True,
                     help="JPEG quality (1..100) of the stored peripheral and foveal views."),
        click.option("--random-crops", type=int, default=_default("random_crops"), show_default=True,
                     help="K seeded random crops per image for the `random` baseline."),
        click.option("--store-features", is_flag=True,
                     help="Store the peripheral's pooled descriptor so stage 2 can skip its forward."),
        click.option("--store-warped", is_flag=True,
                     help="Store the whole photo warped to --view-size squared (warp.jpg, about +23 KiB a photo "
                          "at 224 px, +65 % shard size) for the `single` and `random` baselines (Table I, as the "
                          "paper ran them)."),
        click.option("--store-original", is_flag=True,
                     help="Store the photo at original resolution (orig.jpg, about as large as the source JPEG: "
                          "about 4x the shard size; docs/shards.md) for the `random` baseline's fresh patches."),
        click.option("--seed", type=int, default=_default("seed"), show_default=True,
                     help="Seed of --limit's sample, which shard each image goes to, the random crops and a "
                          "--weights none network (the split's seed is --split-seed)."),
        click.option("--max-pixels", type=int, default=_default("max_pixels"), show_default=True,
                     help="Decompression-bomb limit (pixels)."),
        click.option("--max-failure-rate", type=float, default=_default("max_failure_rate"), show_default=True,
                     help="Exit non-zero when a larger share of images fails."),
        click.option("--overwrite", is_flag=True, help="Start afresh in a folder made with another config."),
        click.option("--num-nodes", type=int, default=None,
                     help="--engine local: split the shards over this many independent jobs "
                          "(default: torchrun's WORLD_SIZE)."),
        click.option("--node-rank", type=int, default=None, help="This job's index with --num-nodes."),
        click.option("--quiet", is_flag=True, help="No progress line."),
    ]
    fn = engine_options(fn)
    for option in reversed(options):
        fn = option(fn)
    return dataset_options(fn, folder=folder)


def _run(kind: str, root: str, **kw) -> None:
    from ..pipeline.preprocess import TooManyFailuresError, run_preprocess

    dataset_opts = collect_dataset_options(kind, kw.pop("val_size"), kw.pop("split_seed"),
                                           kw.pop("image_root", None), kw.pop("threshold"),
                                           path_column=kw.pop("path_column", None),
                                           id_column=kw.pop("id_column", None),
                                           count_columns=kw.pop("count_columns", None),
                                           test_size=kw.pop("test_size", None))
    quiet = kw.pop("quiet")
    engine, ray_options = pop_engine_options(kw)
    cfg = PreprocessConfig(dataset=kind, root=str(root), dataset_options=dataset_opts,
                           progress=not quiet, **kw)
    try:
        if engine == "ray":
            from ..pipeline.ray_preprocess import run_preprocess_ray

            summary = run_preprocess_ray(cfg, ray_options)
        else:
            summary = run_preprocess(cfg)
    except TooManyFailuresError as exc:
        for line in exc.summary.lines():
            click.echo(line)
        click.echo(f"Error: {error_text(exc)}", err=True)
        sys.exit(1)
    for line in summary.lines():
        click.echo(line)


@click.group()
def preprocess():
    """Stage-1 pass: EB attention, optimal tau crops, WebDataset shards + Parquet metadata."""


def _interrupted(kw: dict) -> list[str]:
    """What Ctrl-C keeps of a preprocess run, and the command that resumes it."""
    from ..shards.manifest import find_stats_files

    out = kw.get("out")
    try:
        done = len(find_stats_files(out)) if out else 0
    except OSError:
        done = 0
    return [f"interrupted: the {done} finished shard(s) in {out} are kept (a shard under way is redone)",
            f"resume with the same command: {command_line()}"]


_NAMES = {"ava": "an AVA dataset", "photonet": "a Photo.net dataset", "folder": "a folder (CSV) dataset"}


def _make_command(kind: str, root_help: str):
    @preprocess.command(name=kind, help=f"Preprocess {_NAMES[kind]}. ROOT: {root_help}")
    @click.argument("root", type=click.Path(exists=True))
    @_preprocess_options_for(kind)
    @storage_options
    @on_interrupt(_interrupted)
    @friendly_errors
    def command(root, **kw):
        _run(kind, root, **kw)
    return command


ava = _make_command("ava", "the AVA folder (AVA.txt, images/, aesthetics_image_lists/) or its parent.")
photonet = _make_command("photonet", "the Photo.net folder (photonet_dataset.txt, images/).")
folder = _make_command("folder", "a CSV with an image path column and vote-count columns.")
