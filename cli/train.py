"""``gpf train stage1|stage2``: thin wrappers around ``gpf.train.train_stage1/2``.

An option given on the command line wins over ``--config FILE``, which wins over
the config of the run being resumed (``--resume RUN``), which wins over the
paper's defaults (docs/training.md).
"""
from __future__ import annotations

import os

import click

from .common import (DATASET_KINDS, Location, collect_dataset_options, command_line, dataset_options,
                     default_help, friendly_errors, on_interrupt, storage_options)
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
        click.option("--backbone", default=None,
                     help="Backbone: a registered name or timm:NAME (see `gpf models`, `gpf models --timm PATTERN`); "
                          "in stage 2 the foveal subnet (for --variant single, its one column)."),
        click.option("--weights", default=None,
                     help=default_help("Initial weights of the trained subnet: imagenet | PATH | URL | none", TrainConfig,
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
        click.option("--log-interval", type=int, default=None,
                     help=default_help("Steps between NaN checks on GPU (CPU: every step)", TrainConfig,
                                       "log_interval")),
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
    from ..train.run import check_resume_stage, saved_config

    if kw.get("resume"):     # a run of the other stage is refused first, not as a missing option
        check_resume_stage(kw["resume"], "stage1" if cls is Stage1Config else "stage2")
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


def _interrupted(stage: str):
    """What Ctrl-C keeps of a training run, and the command that resumes it (rank 0 says it)."""
    def advice(kw: dict) -> list[str]:
        import shlex
        from pathlib import Path

        from ..train.loop import LAST

        if not _is_main_process():
            return []
        run = kw.get("resume") or kw.get("out")
        if not run:
            return ["interrupted"]
        run = Path(run)
        if run.is_file():
            run = run.parent
        if not (run / LAST).is_file():
            return [f"interrupted before the first epoch ended: no checkpoint in {run} yet",
                    f"start again with the same command: {command_line()}"]
        data = [kw["kind"], str(kw["root"])] if stage == "stage1" else []
        resume = shlex.join(["gpf", "train", stage, *data, "--resume", str(run)])
        return [f"interrupted: {run} keeps the checkpoint of the last finished epoch ({run / LAST}); "
                "the epoch under way is redone",
                f"resume with: {resume}"]
    return advice


def _gif_width(ctx, param, value):
    """``--gif-width 64`` -> 64; ``--gif-width 256,128`` -> [256, 128]."""
    if value is None:
        return None
    try:
        widths = [int(part) for part in str(value).split(",")]
    except ValueError:
        widths = []
    if len(widths) not in (1, 2) or min(widths) < 1:
        raise click.BadParameter(f"{value!r}: give a positive width W, or P,F for the peripheral and foveal branch")
    return widths[0] if len(widths) == 1 else widths


@click.group()
def train():
    """Train stage 1 (peripheral high/low classifier on raw images) or stage 2 (shards)."""


@train.command()
@click.argument("kind", type=click.Choice(DATASET_KINDS))
@click.argument("root", type=click.Path(exists=True))
@_training_options
@dataset_options
@click.option("--view-size", type=int, default=None, help=default_help("Longest side of the peripheral view", Stage1Config, "view_size"))
@click.option("--max-pixels", type=int, default=None,
              help=default_help("Decompression-bomb limit (pixels)", Stage1Config, "max_pixels"))
@storage_options
@on_interrupt(_interrupted("stage1"))
@friendly_errors
def stage1(kind, root, val_size, split_seed, image_root, threshold, path_column, id_column, count_columns,
           test_size, **kw):
    """Fine-tune the peripheral subnet on KIND dataset ROOT (high/low softmax, paper IV-B).

    Writes RUN/best.pt, the checkpoint `gpf preprocess --stage1 RUN` takes.
    """
    from ..train.config import Stage1Config
    from ..train.stage1 import train_stage1

    options = collect_dataset_options(kind, val_size, split_seed, image_root, threshold, path_column=path_column,
                                      id_column=id_column, count_columns=count_columns, test_size=test_size)
    kw.update(dataset=kind, root=str(root), dataset_options=options or None)
    cfg = _build(Stage1Config, kw)
    result = train_stage1(cfg)
    _report(result, "stage 1")
    if _is_main_process():
        click.echo(f"next: gpf preprocess {kind} {root} --stage1 {result.run_dir} --out SHARDS")


@train.command()
@click.option("--shards", type=Location(exists=True, file_okay=False), default=None,
              help="Shard folder or URL (s3://bucket/prefix ...) made by `gpf preprocess`.")
@click.option("--variant", type=click.Choice(VARIANT_NAMES), default=None,
              help=default_help("gpf (gated fusion), pf (concat); Table I baselines as the paper ran them: single "
                                "(warped photo, fine-tuned), single-periph, random (warped photo + fresh patches); "
                                "with the frozen stage-1 column: single-frozen, random-frozen (stored crops)",
                                Stage2Config, "variant"))
@click.option("--stage1", "stage1_ckpt", type=Location(exists=True), default=None,
              help="Stage-1 checkpoint or run folder: the attention model that made the shards, and the "
                   "peripheral's initial weights [default: the one the manifest names].")
@click.option("--peripheral-backbone", default=None,
              help="The peripheral subnet's backbone (registered or timm:NAME) [default: the stage-1 model's].")
@click.option("--peripheral-weights", default=None,
              help="Start the peripheral from imagenet | PATH | URL | none instead of the stage-1 model.")
@click.option("--gif-width", callback=_gif_width, default=None, metavar="W|P,F",
              help="GIF bottleneck width W1 for both branches, or P,F for the peripheral and foveal branch "
                   "[default: each subnet's, paper Table II for its backbones].")
@click.option("--use-features", type=click.Choice(USE_FEATURES_CHOICES), default=None,
              help=default_help("Use the shards' stored peripheral features when they match the frozen peripheral",
                                Stage2Config, "use_features"))
@click.option("--train-peripheral", is_flag=True, default=None,
              help="Fine-tune the peripheral too (the paper freezes it).")
@click.option("--emd-r", type=int, default=None,
              help=default_help("Power r of the EMD loss (paper Eq. 1)", Stage2Config, "emd_r"))
@click.option("--branch-width", type=int, default=None,
              help=default_help("Width of each column's FC layer (F_c of Table II)", Stage2Config, "branch_width"))
@click.option("--fusion-width", type=int, default=None,
              help=default_help("Width of the fusion's FC layer (FC of Table II)", Stage2Config, "fusion_width"))
@click.option("--dropout", type=float, default=None,
              help=default_help("Dropout after each hidden FC layer", Stage2Config, "dropout"))
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Shards at a URL: keep the tars read (verified against their stats) in this local folder "
                   "for later epochs.")
@click.option("--cache-max-gb", type=float, default=None,
              help=default_help("Size bound of --cache-dir in GiB (least recently used tars go first)", Stage2Config,
                                "cache_max_gb"))
@_training_options
@storage_options
@on_interrupt(_interrupted("stage2"))
@friendly_errors
def stage2(stage1_ckpt, **kw):
    """Train the foveal subnet and fusion on shards with the EMD loss (r = 2 unless --emd-r), peripheral frozen."""
    from ..train.config import Stage2Config
    from ..train.stage2 import train_stage2

    kw["stage1"] = stage1_ckpt
    cfg = _build(Stage2Config, kw)
    result = train_stage2(cfg)
    _report(result, "stage 2")
