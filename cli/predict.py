"""``gpf predict``: score raw photos with the whole online path (peripheral view, EB, crop, fovea, fusion)."""
from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter

import click

from .common import Location, echo_err, engine_options, friendly_errors, pop_engine_options, storage_options
from ..pipeline import bulkscore, scoring
from ..shards.storage import public_url
from ..vocabulary import DEVICE, DEVICE_CHOICES, cli_text

_HEADER = f"{'mean':>6} {'std':>6} {'class':<5} {'box x0,y0,x1,y1':<20} image"


def _table_row(result) -> str:
    where = result.path or result.id
    if not result.ok:
        return f"{'-':>6} {'-':>6} {'-':<5} {result.status:<20} {where}"
    verdict = "-" if result.high is None else ("high" if result.high else "low")
    box = ",".join(map(str, result.box)) if result.box else "-"
    return f"{result.mean:6.3f} {result.std:6.3f} {verdict:<5} {box:<20} {where}"


def _beside_the_bar():
    """A context for writing a line while a live progress bar may be on the same terminal.

    The bar (tqdm, on stderr) is cleared first and redrawn after, so table rows
    on stdout never land on the bar's line and no stale bar state stays behind
    in the table; a no-op when no bar is live (logs, pipes, ``--quiet``).
    """
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext()
    return tqdm.external_write_mode(file=sys.stdout)


@click.command()
@click.argument("images", nargs=-1, required=True, type=Location())
@click.option("--checkpoint", required=True, type=Location(exists=True),
              help="Stage-2 checkpoint file, or a run folder (best.pt, else last.pt); local or a URL.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout instead of the table.")
@click.option("--parquet", "parquet_out", type=Location(dir_okay=False),
              help="Write one row per image here, a file or a URL (id, path, mean, std, distribution, high, box, "
                   "status, error).")
@click.option("--out", "bulk_out", type=click.Path(file_okay=False),
              help="Bulk scoring: IMAGES is one list (CSV/Parquet with a path column) or folder; one Parquet "
                   "of scores per chunk goes here, resumable (docs/evaluation.md).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=bulkscore.DEFAULT_CHUNK_SIZE, show_default=True,
              help="With --out: photos per output Parquet (and per unit of work).")
@click.option("--path-column", default=None,
              help=f"With --out and a list file: its column of paths or URLs [default: the first of "
                   f"{', '.join(bulkscore.PATH_COLUMNS)}].")
@click.option("--batch-size", type=click.IntRange(min=1), default=scoring.DEFAULT_BATCH_SIZE, show_default=True,
              help="Photos per forward pass (memory, not results).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Decoding threads (0 = one per CPU core); with --engine ray see --ray-task-cpus.")
@click.option("--device", default=DEVICE, show_default=True, help=DEVICE_CHOICES)
@click.option("--random-crops", type=click.IntRange(min=1), default=None,
              help=f"'random' variant: crops averaged per photo (default {scoring.DEFAULT_RANDOM_CROPS}).")
@click.option("--threshold", type=float, default=None,
              help="High/low cut on the mean score (default: the checkpoint's).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Decompression-bomb limit in pixels (default as in preprocess).")
@click.option("--quiet", is_flag=True, help="No progress line.")
@engine_options
@storage_options
@friendly_errors
def predict(images, checkpoint, as_json, parquet_out, bulk_out, chunk_size, path_column, batch_size, workers,
            device, random_crops, threshold, max_pixels, quiet, **engine):
    """Score photos: IMAGES are files or folders (searched recursively for image files), local or URLs.

    Prints a table (or JSON lines with --json; only a summary with --parquet
    alone). A photo's id is its path relative to the folder given (a/photo.jpg),
    or its file name when given as a file. Unreadable images are reported and
    skipped; the exit code is 1 only when no image could be scored.

    With --out DIR: IMAGES is one list file or folder, scored chunk by chunk
    into DIR (--engine ray: on a Ray cluster); rerun the same command to resume.
    """
    engine_name, ray_options = pop_engine_options(engine)
    if bulk_out is not None or engine_name == "ray":
        _bulk(images, checkpoint, as_json, parquet_out, bulk_out, chunk_size, path_column, batch_size, workers,
              device, random_crops, threshold, max_pixels, quiet, engine_name, ray_options)
        return
    from ..pipeline.progress import Progress
    from ..pipeline.scoring import ParquetResultWriter, Scorer, named_image_files

    scorer = Scorer.from_checkpoint(checkpoint, device, random_crops=random_crops, threshold=threshold,
                                    max_pixels=max_pixels, workers=workers)
    files = named_image_files(images)
    if not files:
        raise click.ClickException(f"no image files in {', '.join(images)} (extensions looked for: "
                                   "jpg jpeg png webp tif tiff bmp gif ...)")
    table = not as_json and not parquet_out
    if table:
        click.echo(_HEADER)
    progress = Progress(len(files), "predict", enabled=not quiet)
    writer = ParquetResultWriter(parquet_out, metadata=scorer.describe()) if parquet_out else None
    statuses: Counter = Counter()
    try:
        for result in scorer.score_many(files, batch_size, progress=progress):
            statuses[result.status] += 1
            if writer is not None:
                writer.write(result)
            if as_json or table or not result.ok:
                with _beside_the_bar():
                    if as_json:
                        click.echo(json.dumps(result.as_dict()))
                    elif table:
                        click.echo(_table_row(result))
                    if not result.ok:
                        echo_err(f"skipped: {cli_text(result.error)}")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    progress.close()
    if writer is not None:
        writer.close()
    scored = statuses.pop("ok", 0)
    failed = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    echo_err(f"scored {scored} of {len(files)} images" + (f" ({failed})" if failed else "")
             + (f"; scores written to {public_url(parquet_out)}" if parquet_out else ""))
    if scored == 0:
        echo_err("Error: no image could be scored")
        sys.exit(1)


def _bulk(images, checkpoint, as_json, parquet_out, bulk_out, chunk_size, path_column, batch_size, workers,
          device, random_crops, threshold, max_pixels, quiet, engine, ray_options) -> None:
    """``gpf predict LIST --out DIR [--engine ray]``: one Parquet of scores per chunk of the list."""
    if bulk_out is None:
        raise click.UsageError("--engine ray writes one Parquet of scores per chunk: give --out DIR")
    if as_json or parquet_out:
        raise click.UsageError("--out writes Parquet chunks; drop --json/--parquet (or --out)")
    if len(images) != 1:
        raise click.UsageError(f"--out takes one list (CSV/Parquet) or folder; got {len(images)} inputs")
    if engine == "ray":
        from ..pipeline.ray_scoring import BuildScorer, run_bulk_ray

        build = BuildScorer.of(checkpoint, random_crops=random_crops, threshold=threshold, max_pixels=max_pixels)
        summary = run_bulk_ray(images[0], bulk_out, build, device, options=ray_options, chunk_size=chunk_size,
                               batch_size=batch_size, path_column=path_column,
                               workers=ray_options.task_threads, progress=not quiet)
    else:
        scorer = scoring.Scorer.from_checkpoint(checkpoint, device, random_crops=random_crops,
                                                threshold=threshold, max_pixels=max_pixels, workers=workers)
        summary = bulkscore.run_bulk_local(images[0], bulk_out, scorer, chunk_size=chunk_size,
                                           batch_size=batch_size, path_column=path_column, progress=not quiet)
    for line in summary.lines():
        click.echo(line)
    if summary.failed_chunks:
        echo_err(f"Error: {len(summary.failed_chunks)} chunk(s) failed; rerun the same command to redo them")
        sys.exit(1)
    if summary.total and not summary.counts.get("ok"):
        echo_err("Error: no image could be scored")
        sys.exit(1)
