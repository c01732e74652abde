"""``gpf evaluate``: the paper's Table I (and Table IV with --by-category) for a checkpoint on shards."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .common import Location, echo_err, friendly_errors, storage_options
from ..pipeline.evaluation import DEFAULT_BATCH_SIZE
from ..vocabulary import DEVICE, DEVICE_CHOICES, SPLITS


@click.command()
@click.option("--checkpoint", required=True, type=Location(exists=True),
              help="Stage-2 checkpoint file, or a run folder (best.pt, else last.pt); local or a URL.")
@click.option("--shards", required=True, type=Location(exists=True, file_okay=False),
              help="Shard folder or URL (s3://bucket/prefix ...) made by `gpf preprocess` (with manifest.json).")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
              help="The split of the shards to score (the paper reports test).")
@click.option("--by-category", is_flag=True,
              help="Also per AVA category (Table IV), or per semantic tag when the shards record no category.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Write the metrics as JSON (accuracy srcc lcc mae rmse emd, n, split, checkpoint, groups).")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False),
              help="Write PNG figures here: best/worst distributions, mean-score scatter, EMD histogram.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Images per forward pass (memory, not results).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Loader processes (default: up to 4; 0 reads in the main process).")
@click.option("--device", default=DEVICE, show_default=True, help=DEVICE_CHOICES)
@click.option("--allow-attention-mismatch", is_flag=True,
              help="Evaluate although the checkpoint's attention model did not make the shards' crops.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@storage_options
@friendly_errors
def evaluate(checkpoint, shards, split, by_category, json_out, plots_dir, batch_size, workers, device,
             allow_attention_mismatch, quiet):
    """Accuracy, SRCC, LCC, MAE, RMSE and EMD (r=1) of a stage-2 checkpoint on a split of shards.

    The checkpoint must fit the shards: same number of score buckets and view
    size, and (gpf/pf variants) the attention model that made the shards' crops;
    see docs/evaluation.md.
    """
    from ..pipeline.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, shards, split, batch_size=batch_size, workers=workers,
                                 device=device, by_category=by_category,
                                 allow_attention_mismatch=allow_attention_mismatch, progress=not quiet)
    for warning in result.warnings:
        echo_err(f"warning: {warning}")
    for line in result.table_lines():
        click.echo(line)
    if json_out:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")
        click.echo(f"metrics written to {path}")
    if plots_dir:
        from ..pipeline.plots import write_evaluation_plots

        for path in write_evaluation_plots(result, plots_dir):
            click.echo(f"plot written to {path}")
