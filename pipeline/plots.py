"""Figures of an evaluation (paper Fig. 5 and two diagnostics, PNG) and of one photo's attention (Fig. 4).

Both use matplotlib (the ``plots`` extra: ``pip install 'gpf[plots]'``),
imported when a figure is drawn. They are drawn on a bare
``matplotlib.figure.Figure`` with an Agg canvas, so matplotlib's global backend
and pyplot's figure list are never touched (safe inside notebooks and GUIs).
Each ``*_figure`` function builds the Figure; the ``plot_*``/``save_*`` ones write it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import GPFError, OptionError

#: Files written by :func:`write_evaluation_plots`.
PLOT_FILES = {"distributions": "distributions.png", "scatter": "mean_scatter.png", "emd": "emd_hist.png"}
DEFAULT_PANELS = 4
DPI = 100


class PlotError(GPFError):
    """A figure that cannot be drawn (e.g. matplotlib is missing)."""


def _figure(width_in: float, height_in: float):
    """A matplotlib Figure with its own Agg canvas (no pyplot, no global backend change)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("the figures (evaluation plots, attention) need matplotlib: pip install 'gpf[plots]' "
                        "(or pip install matplotlib)") from None
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def best_and_worst(emd_per_image: np.ndarray, panels: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the lowest-EMD and the highest-EMD images: disjoint, stable (ties by position).

    Each set has ``panels`` images, but at most half of them, so no image is
    among both the best and the worst of a small split; a single image is
    the best one, and no image is the worst.
    """
    order = np.argsort(np.asarray(emd_per_image), kind="stable")
    n = len(order)
    k = min(panels, n // 2)
    if k == 0:
        return order[:min(panels, n, 1)], order[:0]
    return order[:k], order[::-1][:k]


def distributions_figure(result, panels: int = DEFAULT_PANELS):
    """The Figure of :func:`plot_distributions`: a row of the best images, a row of the worst (if any).

    The legend sits under the panels, outside every axes, so it covers no bar.
    """
    best, worst = best_and_worst(result.emd_per_image, panels)
    columns = max(len(best), 1)
    rows = [("best", best)] + ([("worst", worst)] if len(worst) else [])
    fig = _figure(3.2 * columns, 0.6 + 2.6 * len(rows) + 0.4)
    scores = np.asarray(result.scores)
    width = 0.4 * (float(np.min(np.diff(scores))) if len(scores) > 1 else 1.0)
    emds = result.emd_per_image
    for row, (label, picks) in enumerate(rows):
        for col, index in enumerate(picks):
            ax = fig.add_subplot(len(rows), columns, row * columns + col + 1)
            ax.bar(scores - width / 2, result.true_dist[index], width, label="ground truth", color="0.55")
            ax.bar(scores + width / 2, result.pred_dist[index], width, label="predicted", color="tab:orange")
            ax.set_title(f"{label}: {result.ids[index]}\nEMD {emds[index]:.3f}  "
                         f"mean {result.true_mean[index]:.2f} / {result.pred_mean[index]:.2f}", fontsize=8)
            ax.set_xticks(scores)
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel("probability", fontsize=8)
    bottom = 0.0
    if fig.axes:
        handles, labels = fig.axes[0].get_legend_handles_labels()
        legend = fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
        # the legend's height, to keep the panels above it
        bottom = legend.get_window_extent(fig.canvas.get_renderer()).height / fig.bbox.height
    fig.suptitle(f"Score distributions, {result.split} split (ground truth / predicted mean)", fontsize=10)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def plot_distributions(result, path, panels: int = DEFAULT_PANELS) -> Path:
    """Paper Fig. 5: ground-truth vs predicted score distributions of the best and worst images (EMD)."""
    return _save(distributions_figure(result, panels), path)


def plot_mean_scatter(result, path) -> Path:
    """Predicted vs true mean score, the identity line and the high/low threshold on both axes."""
    fig = _figure(5.5, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    true, pred = result.true_mean, result.pred_mean
    lo, hi = float(min(result.scores)), float(max(result.scores))
    size = float(np.clip(3000 / max(result.n, 1), 4, 30))   # big dots for few images, small for many
    ax.scatter(true, pred, s=size, alpha=0.5, color="tab:blue", edgecolors="none")
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, label="predicted = true")
    ax.axvline(result.threshold, color="tab:red", lw=0.8, ls="--", label=f"threshold {result.threshold:g}")
    ax.axhline(result.threshold, color="tab:red", lw=0.8, ls="--")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("true mean score")
    ax.set_ylabel("predicted mean score")
    m = result.metrics
    ax.set_title(f"{result.split}: n={result.n}  SRCC {m['srcc']:.3f}  LCC {m['lcc']:.3f}  "
                 f"acc {100 * m['accuracy']:.1f}%", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def emd_histogram_figure(result, bins: int = 40):
    """The Figure of :func:`plot_emd_histogram`; its count axis has integer ticks only."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    emds = result.emd_per_image
    ax.hist(emds, bins=min(bins, max(1, len(emds))), color="tab:green", alpha=0.8)
    ax.axvline(float(emds.mean()), color="k", lw=1, ls="--", label=f"mean {emds.mean():.4f}")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("EMD (r = 1) per image")
    ax.set_ylabel("images")
    ax.set_title(f"{result.split}: n={result.n}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_emd_histogram(result, path, bins: int = 40) -> Path:
    """Histogram of the per-image EMD (r = 1) with its mean (Table I's EMD) marked."""
    return _save(emd_histogram_figure(result, bins), path)


def write_evaluation_plots(result, out_dir, panels: int = DEFAULT_PANELS) -> list[Path]:
    """The three evaluation figures (:data:`PLOT_FILES`) in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    return [plot_distributions(result, out_dir / PLOT_FILES["distributions"], panels),
            plot_mean_scatter(result, out_dir / PLOT_FILES["scatter"]),
            plot_emd_histogram(result, out_dir / PLOT_FILES["emd"])]


# ----------------------------------------------------------------------------- attention (paper Fig. 4)

#: ``--out`` extension -> the format written (matplotlib's savefig; JPEG through Pillow).
FIGURE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg"}
#: The attention figure is at most this many pixels wide (at :data:`DPI`); panels shrink to fit.
MAX_FIGURE_PX = 2000
PANEL_IN = 3.2              # panel height of a photo of ordinary aspect, inches (320 px)
MAX_PANEL_IN = 6.0          # a portrait row may grow up to this height
MIN_ROW_PANEL_IN = 2.0      # below this a side-by-side row is too small: the panels are stacked
_COLORBAR_IN = 0.9          # room for the colour scale and its label beside the attention panel (row)...
_COLORBAR_H_IN = 0.6        # ... or under it (stacked panels)
_MIN_CAPTION_IN = 1.4       # a panel's cell is at least this wide, for its caption
_GAP_IN = 0.3
_BOX_COLOUR = "#00ff78"
_CMAP = "inferno"


class FigureFormatError(PlotError, OptionError):
    """A figure file name whose extension names no format gpf writes (``param='out'``)."""


def figure_format(path) -> str:
    """The format :data:`FIGURE_FORMATS` gives the extension of ``path``; FigureFormatError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        what = f"the extension {suffix!r} names no figure format" if suffix else "the name has no extension"
        raise FigureFormatError(f"cannot write the figure {str(path)!r}: {what}; "
                                f"give out a name ending in one of {', '.join(FIGURE_FORMATS)}", param="out")
    return FIGURE_FORMATS[suffix]


def relative_attention(attn: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """The attention map upsampled bicubic to ``size_hw`` (as the crop search sees it), clamped at 0,
    divided by its peak: values in [0, 1] (all 0 for an all-zero map)."""
    from ..model.attention import upsample_map

    up = np.clip(upsample_map(np.asarray(attn, dtype=np.float32), tuple(int(s) for s in size_hw)), 0, None)
    peak = float(up.max())
    return up / peak if peak > 0 else up


def variant_note(variant: str | None, crop_boxes: Sequence = (), view_size: int | None = None,
                 periph_size: tuple[int, int] | None = None) -> str | None:
    """What a ``single`` or ``random`` model actually sees, for the figure; None when it sees the tau box."""
    from ..vocabulary import get_variant

    if variant is None or get_variant(variant).needs_attention:
        return None
    table = get_variant(variant)
    periph = f" ({periph_size[0]}x{periph_size[1]} peripheral view)" if periph_size else ""
    if table.first_view == "warp":
        periph = f" (warped to {view_size}x{view_size})" if view_size else " (warped to a square)"
    if table.columns == 1:
        return (f"{variant} variant: the model sees only the whole photo{periph}. The attention shown is the "
                f"embedded stage-1 model's and is not used by the {variant} variant: no tau box, no foveal view.")
    size = f"{view_size}x{view_size} " if view_size else ""
    return (f"{variant} variant: the second column sees {len(crop_boxes)} seeded random {size}crops (dashed boxes "
            "on the photo; the score averages them), not the tau box. The attention shown is the embedded "
            f"stage-1 model's and is not used by the {variant} variant.")


def _wrap(text: str, width_in: float, points: float) -> str:
    import textwrap

    chars = max(16, int(width_in * 72 / (0.55 * points)))   # an average glyph is ~0.55 em wide
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def _shown(image, width_in: float, height_in: float):
    """``image`` reduced to at most twice the panel's pixels (the figure never needs more)."""
    from PIL import Image

    limit = (max(1, round(2 * width_in * DPI)), max(1, round(2 * height_in * DPI)))
    if image.width <= limit[0] and image.height <= limit[1]:
        return image
    shown = image.copy()
    shown.thumbnail(limit, Image.Resampling.LANCZOS)
    return shown


def _layout(aspects: Sequence[float]) -> tuple[str, list[tuple[float, float]]]:
    """``(layout, [(width, height)] of each panel in inches)`` for panels of ``aspects`` (width / height).

    Side by side ('row') at a common height, grown for a narrow (portrait) row
    up to :data:`MAX_PANEL_IN` and shrunk so the figure is at most
    :data:`MAX_FIGURE_PX` wide; when that leaves panels under
    :data:`MIN_ROW_PANEL_IN` high (a panorama), stacked ('column'): each panel
    as wide as the cap allows and at most :data:`PANEL_IN` high.
    """
    cap = MAX_FIGURE_PX / DPI
    total = float(sum(aspects))
    room = cap - _COLORBAR_IN - _GAP_IN * (len(aspects) + 1)
    height = min(max(PANEL_IN, 8.0 / total), MAX_PANEL_IN, room / total)
    if height >= MIN_ROW_PANEL_IN:
        return "row", [(a * height, height) for a in aspects]
    width = cap - 2 * _GAP_IN
    heights = [min(width / a, PANEL_IN) for a in aspects]
    return "column", [(a * h, h) for a, h in zip(aspects, heights)]


def _image_panel(ax, image, extent, caption: str, width_in: float) -> None:
    """``image`` drawn over ``extent`` (x0, x1, y1, y0 in pixels of the original) at its own aspect."""
    ax.imshow(np.asarray(image), extent=extent, aspect="equal", interpolation="antialiased")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(_wrap(caption, width_in, 8), fontsize=8)


def _rectangle(ax, box, **style) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, **style))


def attention_figure(view, title: str, tau: float, *, variant: str | None = None, crop_boxes: Sequence = ()):
    """Paper Fig. 4 for one photo as a matplotlib Figure: the photo, its attention, and what the model sees.

    ``view`` is a :class:`gpf.pipeline.scoring.AttentionView`; ``variant`` the
    stage-2 variant (None: a stage-1 checkpoint); ``crop_boxes`` the ``random``
    variant's crops (``x0, y0, x1, y1``). Panels keep their image's aspect
    (``imshow(aspect='equal')`` over the original's pixel coordinates) and the
    figure is at most :data:`MAX_FIGURE_PX` wide:

    * photo;
    * EB attention blended over it, with a colour scale (attention relative to
      its peak, 0 to 1) and, when the model uses it, the tau box;
    * third panel: the foveal view (the box's pixels the model gets, shown at
      the box's aspect) for ``gpf``/``pf`` and stage-1 checkpoints; the first
      random crop for ``random``; none for ``single``.

    For ``single`` and ``random`` a note under the panels says what the model
    sees (:func:`variant_note`).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    image, attended = view.image, view.attended
    width, height = image.size
    note = variant_note(variant, crop_boxes, view.fovea.width, view.periph.size)
    uses_box = note is None             # a stage-1 checkpoint, gpf or pf: the tau box makes the second view
    third = None
    if uses_box:
        x0, y0, x1, y1 = attended.box
        third = (view.fovea, (x0, x1, y1, y0),
                 f"foveal view: box ({x0},{y0})-({x1},{y1}), {x1 - x0}x{y1 - y0} px, resized to "
                 f"{view.fovea.width}x{view.fovea.height} for the foveal column (shown at the box's aspect)")
    elif crop_boxes:
        x0, y0, x1, y1 = crop_boxes[0]
        third = (image.crop((x0, y0, x1, y1)), (x0, x1, y1, y0),
                 f"random crop 1 of {len(crop_boxes)}: ({x0},{y0})-({x1},{y1}), what the random variant's "
                 "second column sees (not the tau box)")
    aspects = [width / height, width / height] + ([(third[1][1] - third[1][0]) / (third[1][2] - third[1][3])]
                                                  if third else [])
    layout, panels = _layout(aspects)
    cap = MAX_FIGURE_PX / DPI
    if layout == "row":     # the colour scale beside the attention panel; each cell wide enough for a caption
        cells = [max(w, _MIN_CAPTION_IN) + (_COLORBAR_IN if i == 1 else 0.0) for i, (w, _) in enumerate(panels)]
        fig_width = min(sum(cells) + _GAP_IN * (len(cells) + 1), cap)
    else:                   # stacked: the colour scale under the attention panel
        cells = [max(max(w for w, _ in panels), _MIN_CAPTION_IN)] * len(panels)
        fig_width = min(cells[0] + 2 * _GAP_IN, cap)
    text_w = fig_width - 2 * _GAP_IN
    title = _wrap(title, text_w, 10)
    note = _wrap(note, text_w, 9) if note else None
    text_h = 0.2 * (title.count("\n") + 1) + (0.18 * (note.count("\n") + 1) + 0.1 if note else 0.0) + 0.2
    caption_h = 0.5
    if layout == "row":
        fig_height = max(h for _, h in panels) + caption_h + text_h
    else:
        fig_height = sum(h + caption_h for _, h in panels) + _COLORBAR_H_IN + text_h
    fig = _figure(fig_width, fig_height)
    fig.set_layout_engine("constrained")
    if layout == "row":
        grid = fig.add_gridspec(1, len(cells), width_ratios=cells)
        axes = [fig.add_subplot(grid[0, i]) for i in range(len(cells))]
    else:
        grid = fig.add_gridspec(len(cells), 1, height_ratios=[h + (_COLORBAR_H_IN if i == 1 else 0.0)
                                                             for i, (_, h) in enumerate(panels)])
        axes = [fig.add_subplot(grid[i, 0]) for i in range(len(cells))]

    shown = _shown(image, *panels[0])
    extent = (0, width, height, 0)
    boxes_note = f", {len(crop_boxes)} random crops dashed" if crop_boxes and not uses_box else ""
    _image_panel(axes[0], shown, extent, f"photo {width}x{height}{boxes_note}", cells[0])
    for box in crop_boxes if not uses_box else ():
        _rectangle(axes[0], box, edgecolor="white", linewidth=1.2, linestyle="--")

    fraction = attended.attn_fraction
    if uses_box:
        held = ("map all zero: box = whole photo" if attended.zero or fraction is None
                else f"box holds {100 * fraction:.1f}%")
        caption = f"EB attention, tau={tau:g}: {held}"
    else:
        caption = f"EB attention of the embedded stage-1 model (not used by the {variant} variant)"
    _image_panel(axes[1], shown, extent, caption, cells[1])
    axes[1].imshow(relative_attention(attended.attn, (shown.height, shown.width)), extent=extent,
                   aspect="equal", cmap=_CMAP, vmin=0.0, vmax=1.0, alpha=0.55, interpolation="antialiased")
    if uses_box:
        _rectangle(axes[1], attended.box, edgecolor=_BOX_COLOUR, linewidth=2.0)
    if layout == "row":
        bar = {"location": "right", "fraction": 0.15 / cells[1], "pad": 0.02}
    else:
        bar = {"location": "bottom", "fraction": 0.15 / (panels[1][1] + _COLORBAR_H_IN), "pad": 0.02, "shrink": 0.5}
    scale = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), _CMAP), ax=axes[1], **bar)
    scale.set_label("relative attention (1 = its max)", fontsize=7)
    scale.ax.tick_params(labelsize=7)

    if third is not None:
        crop, crop_extent, caption = third
        _image_panel(axes[2], _shown(crop, *panels[2]), crop_extent, caption, cells[2])

    fig.suptitle(title, fontsize=10)
    if note:
        fig.supxlabel(note, fontsize=9, color="darkred")
    return fig


def save_attention_figure(view, path, title: str, tau: float, *, variant: str | None = None,
                          crop_boxes: Sequence = ()) -> Path:
    """Write :func:`attention_figure` in the format its extension names (:data:`FIGURE_FORMATS`).

    An unknown extension raises :class:`FigureFormatError` before anything is drawn.
    """
    path = Path(path)
    fmt = figure_format(path)
    fig = attention_figure(view, title, tau, variant=variant, crop_boxes=crop_boxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, **({"pil_kwargs": {"quality": 95}} if fmt == "jpeg" else {}))
    return path
