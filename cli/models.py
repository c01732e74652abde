"""``gpf models``: the registered backbones, timm's, and the size of GPF-CNN on each."""
from __future__ import annotations

import json

import click


@click.command("models")
@click.option("--num-classes", type=click.IntRange(min=1), default=10, show_default=True,
              help="Score buckets N of the parameter counts (AVA 10, Photo.net 7).")
@click.option("--backbone", "names", multiple=True, metavar="NAME",
              help="Only these backbones (repeatable; registered or timm:NAME). Default: all registered.")
@click.option("--timm", "timm_pattern", default=None, metavar="PATTERN",
              help="List the timm models matching PATTERN (wildcards as in timm.list_models, e.g. 'convnext*'; "
                   "no wildcard: a substring) with C and the GIF width gpf would use; use one as timm:NAME.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
def models(num_classes: int, names: tuple[str, ...], timm_pattern: str | None, as_json: bool) -> None:
    """List registered backbones: channels C, stride, minimum input side, default
    Excitation Backprop layer, GIF bottleneck [W1, C] (paper Table II) and the
    parameter counts of the stage-1 model and of every stage-2 variant.
    """
    from ..errors import GPFError
    from ..model.backbones import get_spec
    from ..model.gpf import describe_backbones, format_backbone_table

    if timm_pattern is not None:
        _list_timm(timm_pattern, as_json)
        return
    for name in names:
        try:
            get_spec(name)
        except GPFError as exc:
            raise click.BadParameter(str(exc), param_hint="--backbone") from None
    rows = describe_backbones(num_classes, list(names) or None)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(format_backbone_table(rows, num_classes))
    click.echo("\nParameters in millions; models are sized without allocating weights. "
               "Variants: single, random, pf, gpf (paper Table I).")


def _list_timm(pattern: str, as_json: bool) -> None:
    from ..model.arch_timm import describe_timm, format_timm_table

    rows = describe_timm(pattern)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        raise click.BadParameter(f"no timm model matches {pattern!r}", param_hint="--timm")
    click.echo(format_timm_table(rows))
    click.echo(f"\n{len(rows)} timm model(s), sized on the meta device (no weights). C is the width of the "
               "pooled descriptor (forward_head(pre_logits=True)); use one with --backbone timm:NAME. "
               "`gpf models --backbone timm:NAME` adds the stride, minimum input and the variants' sizes.")
