"""``gpf shards``: inspect and verify shard folders (logic in :mod:`gpf.shards.verify`)."""
from __future__ import annotations

import json

import click

from .common import Location, friendly_errors, storage_options


@click.group()
def shards():
    """Inspect and verify shard folders written by `gpf preprocess`."""


@shards.command()
@click.argument("folder", type=Location(file_okay=False))
@click.option("--quick", is_flag=True,
              help="Check sizes, sha256 sums and counts only; do not decode members.")
@click.option("--write-manifest", is_flag=True,
              help="(Re)write manifest.json from the stats files when every tar matches its "
                   "stats (keeps the config of a readable old manifest).")
@storage_options
@friendly_errors
def verify(folder, quick, write_manifest):
    """Check every shard of FOLDER (a folder or a URL such as s3://bucket/shards) against its stats and the manifest.

    Prints one line per problem and a summary; exits 1 when anything is wrong.
    """
    from ..shards.verify import verify_shards

    report = verify_shards(folder, deep=not quick, write_manifest=write_manifest)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for line in report.lines():
        click.echo(line)
    click.echo(report.summary())
    if not report.ok:
        raise SystemExit(1)


@shards.command()
@click.argument("folder", type=Location(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@storage_options
@friendly_errors
def info(folder, as_json):
    """Counts per split and status, box statistics and the config of FOLDER."""
    from ..shards.verify import format_info, info as shard_info

    summary = shard_info(folder)
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return
    for line in format_info(summary):
        click.echo(line)
