"""``gpf demo``: the whole pipeline on a generated AVA-format dataset where the answer is known."""
from __future__ import annotations

import time

import click

from .common import friendly_errors
from ..vocabulary import DEVICE, DEVICE_CHOICES


@click.command()
@click.option("--out", default="demo_out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the dataset, runs, shards, plots and attention picture.")
@click.option("--quick", is_flag=True,
              help="1,000 instead of 1,500 photos and 20 instead of 30 stage-2 epochs (about 60 % of the time).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the generated dataset and of training.")
@click.option("--device", default=DEVICE, show_default=True, help=DEVICE_CHOICES)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch CPU threads: 1 is the safe choice on a busy machine; more are faster on idle cores.")
@click.option("--fresh", is_flag=True,
              help="Delete what an earlier demo wrote in --out and start again (default: resume).")
@friendly_errors
def demo(out, quick, seed, device, threads, fresh):
    """Generate a small fine-detail dataset in the AVA format, then run train stage1 -> preprocess ->
    train stage2 (single-frozen and gpf) -> evaluate, and print the comparison.

    The score of each generated photo depends on the colour of one framed
    panel (visible at any scale) and on a fine plaid on it (invisible in the
    low-resolution peripheral view, visible in a foveal crop of the panel).
    GPF-CNN should find the panel with its attention and beat the single
    low-resolution column. About 2.5 minutes on 2 CPU cores. Rerunning with
    the same options resumes (finished steps are kept). See docs/demo.md.
    """
    from ..workflows.experiment import demo_plan, run_synthetic_experiment

    started = time.perf_counter()
    spec, cfg = demo_plan(out, quick=quick, seed=seed, device=device, threads=threads)
    click.echo(f"gpf demo: outputs in {out}", err=True)
    result = run_synthetic_experiment(spec, cfg, fresh=fresh, echo=lambda line: click.echo(line, err=True))
    click.echo("")
    click.echo(f"Comparison on the {result.split} split ({cfg.backbone} backbone, {cfg.view_size} px views):")
    for line in result.table_lines():
        click.echo(line)
    click.echo("")
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"outputs in {result.out}:")
    click.echo(f"  dataset      {cfg.root}")
    click.echo(f"  stage 1      {result.stage1_checkpoint}")
    click.echo(f"  shards       {result.shards}")
    for name, variant in result.variants.items():
        click.echo(f"  {name:<12} {variant.checkpoint}")
        for plot in variant.plots:
            click.echo(f"               {plot}")
    if result.attention_png is not None:
        click.echo(f"  attention    {result.attention_png}")
    click.echo(f"  results      {result.out / 'results.json'}")
    click.echo(f"done in {time.perf_counter() - started:.0f} s")
