"""``gpf preprocess ava|photonet|folder``: the stage-1 pass that writes shards."""
from __future__ import annotations

import sys

import click

from gpf.cli.common import collect_dataset_options, dataset_options, friendly_errors


def _preprocess_options(fn):
    options = [
        click.option("--out", "out", required=True, type=click.Path(file_okay=False),
                     help="Folder for the shards, meta/ Parquet and manifest.json."),
        click.option("--stage1", type=click.Path(exists=True),
                     help="Stage-1 checkpoint (file or run folder) from `gpf train stage1`."),
        click.option("--backbone", help="Without --stage1: attention from this ImageNet classifier."),
        click.option("--weights", default="imagenet", show_default=True,
                     help="With --backbone: imagenet | PATH | none."),
        click.option("--tau", type=float, default=0.7, show_default=True,
                     help="Share of the attention the crop must hold (paper Eq. 4)."),
        click.option("--view-size", type=int, default=224, show_default=True),
        click.option("--eb-layer", default=None, help="Module name where the EB map is read (default: the backbone's)."),
        click.option("--contrastive", is_flag=True, help="Contrastive Excitation Backprop."),
        click.option("--samples-per-shard", type=int, default=1000, show_default=True),
        click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default="all",
                     show_default=True),
        click.option("--limit", type=int, default=None, help="At most this many images per split (a seeded sample)."),
        click.option("--workers", type=int, default=0, help="Decode/encode threads (0 = one per core)."),
        click.option("--batch-size", type=int, default=32, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N"),
        click.option("--jpeg-quality", type=int, default=95, show_default=True),
        click.option("--random-crops", type=int, default=0, show_default=True,
                     help="K seeded random crops per image for the `random` baseline."),
        click.option("--store-features", is_flag=True,
                     help="Store the peripheral's pooled descriptor so stage 2 can skip its forward."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--max-pixels", type=int, default=None, help="Decompression-bomb limit (pixels)."),
        click.option("--max-failure-rate", type=float, default=0.05, show_default=True,
                     help="Exit non-zero when a larger share of images fails."),
        click.option("--overwrite", is_flag=True, help="Start afresh in a folder made with another config."),
        click.option("--num-nodes", type=int, default=None,
                     help="Split the shards over this many independent jobs (default: torchrun's WORLD_SIZE)."),
        click.option("--node-rank", type=int, default=None, help="This job's index with --num-nodes."),
        click.option("--quiet", is_flag=True, help="No progress line."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return dataset_options(fn)


def _run(kind: str, root: str, **kw) -> None:
    from gpf.pipeline.preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig, run_preprocess

    dataset_opts = collect_dataset_options(kind, kw.pop("val_size"), kw.pop("split_seed"),
                                           kw.pop("image_root"), kw.pop("threshold"))
    quiet = kw.pop("quiet")
    if kw["max_pixels"] is None:
        kw["max_pixels"] = DEFAULT_MAX_PIXELS
    cfg = PreprocessConfig(dataset=kind, root=str(root), dataset_options=dataset_opts,
                           progress=not quiet, **kw)
    summary = run_preprocess(cfg)
    for line in summary.lines():
        click.echo(line)
    if summary.counts.get("ok", 0) == 0:
        click.echo("error: no image could be written; see the status and error columns in "
                   f"{summary.out}/meta", err=True)
        sys.exit(1)
    rate = summary.failures / max(1, summary.total)
    if rate > cfg.max_failure_rate:
        click.echo(f"error: {rate:.1%} of the images failed (more than --max-failure-rate "
                   f"{cfg.max_failure_rate:.1%}); see the status and error columns in {summary.out}/meta",
                   err=True)
        sys.exit(1)


@click.group()
def preprocess():
    """Stage-1 pass: EB attention, optimal tau crops, WebDataset shards + Parquet metadata."""


def _make_command(kind: str, root_help: str):
    @preprocess.command(name=kind, help=f"Preprocess a {kind} dataset. ROOT: {root_help}")
    @click.argument("root", type=click.Path(exists=True))
    @_preprocess_options
    # LabelError, CheckpointError, an unknown backbone ... are ValueErrors whose
    # messages name the input and the fix (as in `gpf train`).
    @friendly_errors(ValueError)
    def command(root, **kw):
        _run(kind, root, **kw)
    return command


ava = _make_command("ava", "the AVA folder (AVA.txt, images/, aesthetics_image_lists/) or its parent.")
photonet = _make_command("photonet", "the Photo.net folder (photonet_dataset.txt, images/).")
folder = _make_command("folder", "a CSV with an image path column and vote-count columns.")
