"""``gpf attention``: the paper's Fig. 4 for one photo (photo, attention + tau box, foveal crop)."""
from __future__ import annotations

import click

from .common import friendly_errors
from ..vocabulary import DEVICE, DEVICE_CHOICES, TAU


@click.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--checkpoint", required=True, type=click.Path(exists=True),
              help="Stage-2 checkpoint (attention + score) or stage-1 checkpoint (attention only); "
                   "file or run folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Figure to write; its extension names the format: .png, .jpg/.jpeg, .pdf or .svg.")
@click.option("--device", default=DEVICE, show_default=True, help=DEVICE_CHOICES)
@click.option("--tau", type=float, default=None, help=f"Stage-1 only: share of attention in the box (default {TAU}).")
@click.option("--eb-layer", default=None, help="Stage-1 only: module where the EB map is read.")
@click.option("--contrastive/--no-contrastive", default=None, help="Stage-1 only: contrastive EB.")
@click.option("--view-size", type=int, default=None, help="Stage-1 only: peripheral view size (default: the checkpoint's).")
@friendly_errors
def attention(image, checkpoint, out, device, tau, eb_layer, contrastive, view_size):
    """Draw IMAGE, its EB attention (colour scale, tau box) and the foveal crop side by side.

    For a `single` or `random` checkpoint the picture says what that model sees
    instead: the whole photo only, or its random crops.
    """
    from ..pipeline.plots import figure_format, save_attention_figure
    from ..pipeline.images import ImageError
    from ..pipeline.scoring import explain_photo, image_id_of, scoring_error_text

    figure_format(out)                      # an unknown extension is refused before any work
    try:
        explanation = explain_photo(checkpoint, image, device, tau=tau, eb_layer=eb_layer,
                                    contrastive=contrastive, view_size=view_size)
    except ImageError as exc:   # a photo named here: "check the path", not the dataset advice
        raise click.ClickException(scoring_error_text(exc)) from None
    path = save_attention_figure(explanation.view, out, explanation.title(image_id_of(image)), explanation.tau,
                                 variant=explanation.variant, crop_boxes=explanation.crop_boxes)
    if explanation.variant is not None and explanation.variant.startswith("single"):
        seen = f"{explanation.variant} variant: the whole photo only, no box"
    elif explanation.variant is not None and explanation.variant.startswith("random"):
        seen = f"{explanation.variant} variant: {len(explanation.crop_boxes)} random crops, no attention box"
    else:
        seen = "box " + ",".join(map(str, explanation.view.attended.box))
    score = "" if explanation.result is None else f", predicted mean {explanation.result.mean:.3f}"
    click.echo(f"wrote {path} ({seen}{score})")
