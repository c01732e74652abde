"""``gpf train stage1|stage2``: thin wrappers around ``gpf.train.train_stage1/2``.

An option given on the command line wins over ``--config FILE``, which wins over
the config of the run being resumed (``--resume RUN``), which wins over the
paper's defaults (docs/training.md).
"""
from __future__ import annotations

import os

import click

from .common import (DATASET_KINDS, collect_dataset_options, dataset_options, default_help,
                            friendly_errors)
from ..train.config import DEVICE_HELP, USE_FEATURES_CHOICES, Stage1Config, Stage2Config, TrainConfig
from ..vocabulary import VARIANT_NAMES


def _training_options(fn):
    """Options shared by both stages; ``None`` means "not given" (config file / resume / default)."""
    options = [
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Run folder: checkpoints, metrics.csv, train.log, config.yaml."),
        click.option("--resume", type=click.Path(exists=True), default=None,
                     help="Continue the run in this folder (or from this last.pt) exactly where it stopped."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="YAML file of config keys (see docs/training.md); command-line options win."),
        click.option("--backbone", default=None, help="Registered backbone (see `gpf models`)."),
        click.option("--weights", default=None,
                     help=default_help("Initial weights of the trained subnet: imagenet | PATH | none", TrainConfig,
                                       "weights")),
        click.option("--epochs", type=int, default=None, help=default_help("At most this many epochs", TrainConfig, "epochs")),
        click.option("--lr", type=float, default=None, help=default_help("Initial learning rate", TrainConfig, "lr")),
        click.option("--lr-step", type=int, default=None, help=default_help("Divide the lr every this many epochs", TrainConfig, "lr_step")),
        click.option("--lr-gamma", type=float, default=None, help=default_help("Factor applied every --lr-step epochs", TrainConfig, "lr_gamma")),
        click.option("--momentum", type=float, default=None, help=default_help("SGD momentum", TrainConfig, "momentum")),
        click.option("--weight-decay", type=float, default=None, help=default_help("SGD weight decay", TrainConfig, "weight_decay")),
        click.option("--batch-size", type=int, default=None,
                     help=default_help("Global batch size, split across DDP processes", TrainConfig, "batch_size")),
        click.option("--patience", type=int, default=None,
                     help=default_help("Stop after this many epochs without a validation-loss improvement "
                                       "(0: never)", TrainConfig, "patience")),
        click.option("--workers", type=int, default=None, help="Loader processes per rank [default: up to 4]."),
        click.option("--seed", type=int, default=None, help=default_help("Seed of the data order and the random draws", TrainConfig, "seed")),
        click.option("--device", default=None, help=default_help(DEVICE_HELP, TrainConfig, "device")),
        click.option("--amp/--no-amp", default=None,
                     help="Mixed precision (bf16, or fp16 with loss scaling) [default: on for CUDA, off on CPU]."),
        click.option("--compile/--no-compile", "compile_model", default=None, help="torch.compile the model."),
        click.option("--limit-train-batches", type=int, default=None,
                     help="At most this many steps per epoch (smoke runs)."),
        click.option("--tensorboard/--no-tensorboard", default=None,
                     help="TensorBoard scalars when tensorboard is installed [default: on]."),
        click.option("--quiet", is_flag=True, default=False, help="No progress line or log on stderr."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


_RENAMED = {"compile_model": "compile"}
_NOT_CONFIG = {"config_file", "quiet"}


def _overrides(kw: dict) -> dict:
    """Config keys of the options the user gave (non-None)."""
    out = {_RENAMED.get(k, k): v for k, v in kw.items() if v is not None and k not in _NOT_CONFIG}
    if kw.get("quiet"):
        out["progress"] = False
    return out


def _build(cls, kw: dict):
    from ..train.config import build_config
    from ..train.run import saved_config

    saved = saved_config(kw["resume"]) if kw.get("resume") else None
    return build_config(cls, yaml_path=kw.get("config_file"), overrides=_overrides(kw), saved=saved)


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _report(result, stage: str) -> None:
    if not _is_main_process():
        return
    best = f"{result.best_val_loss:.4f} at epoch {result.best_epoch}" if result.best_epoch else "none"
    click.echo(f"{stage}: {result.epochs_completed} epoch(s) done ({result.stopped.replace('_', ' ')}); "
               f"best validation loss {best}")
    click.echo(f"best checkpoint: {result.best_checkpoint}")
    click.echo(f"last checkpoint: {result.last_checkpoint}")
    click.echo(f"metrics: {result.run_dir / 'metrics.csv'}")
    for note in result.notes:
        click.echo(note)


@click.group()
def train():
    """Train stage 1 (peripheral high/low classifier on raw images) or stage 2 (shards)."""


@train.command()
@click.argument("kind", type=click.Choice(DATASET_KINDS))
@click.argument("root", type=click.Path(exists=True))
@_training_options
@dataset_options
@click.option("--view-size", type=int, default=None, help=default_help("Longest side of the peripheral view", Stage1Config, "view_size"))
@click.option("--max-pixels", type=int, default=None, help="Decompression-bomb limit (pixels).")
@friendly_errors
def stage1(kind, root, val_size, split_seed, image_root, threshold, **kw):
    """Fine-tune the peripheral subnet on KIND dataset ROOT (high/low softmax, paper IV-B).

    Writes RUN/best.pt, the checkpoint `gpf preprocess --stage1 RUN` takes.
    """
    from ..train.config import Stage1Config
    from ..train.stage1 import train_stage1

    options = collect_dataset_options(kind, val_size, split_seed, image_root, threshold)
    kw.update(dataset=kind, root=str(root), dataset_options=options or None)
    cfg = _build(Stage1Config, kw)
    result = train_stage1(cfg)
    _report(result, "stage 1")
    if _is_main_process():
        click.echo(f"next: gpf preprocess {kind} {root} --stage1 {result.run_dir} --out SHARDS")


@train.command()
@click.option("--shards", type=click.Path(exists=True, file_okay=False), default=None,
              help="Shard folder made by `gpf preprocess`.")
@click.option("--variant", type=click.Choice(VARIANT_NAMES), default=None,
              help=default_help("gpf (gated fusion), pf (concat), random (random crops), single (peripheral only)",
                                Stage2Config, "variant"))
@click.option("--stage1", "stage1_ckpt", type=click.Path(exists=True), default=None,
              help="Stage-1 checkpoint or run folder: the attention model that made the shards, and the "
                   "peripheral's initial weights [default: the one the manifest names].")
@click.option("--peripheral-weights", default=None,
              help="Start the peripheral from imagenet | PATH | none instead of the stage-1 model.")
@click.option("--use-features", type=click.Choice(USE_FEATURES_CHOICES), default=None,
              help=default_help("Use the shards' stored peripheral features when they match the frozen peripheral",
                                Stage2Config, "use_features"))
@click.option("--train-peripheral", is_flag=True, default=None,
              help="Fine-tune the peripheral too (the paper freezes it).")
@_training_options
@friendly_errors
def stage2(stage1_ckpt, **kw):
    """Train the foveal subnet and fusion on shards with the EMD loss (r = 2), peripheral frozen."""
    from ..train.config import Stage2Config
    from ..train.stage2 import train_stage2

    kw["stage1"] = stage1_ckpt
    cfg = _build(Stage2Config, kw)
    result = train_stage2(cfg)
    _report(result, "stage 2")
