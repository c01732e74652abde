"""PNG figures of an evaluation (paper Fig. 5 and two diagnostics) and of one photo's attention (Fig. 4).

The evaluation figures use matplotlib (the ``plots`` extra: ``pip install
'gpf[plots]'``), imported when a figure is drawn. They are drawn on a bare
``matplotlib.figure.Figure`` with an Agg canvas, so matplotlib's global backend
and pyplot's figure list are never touched (safe inside notebooks and GUIs).
The attention figure needs only PIL.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import GPFError

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
        raise PlotError("the evaluation plots need matplotlib: pip install 'gpf[plots]' "
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
    """Indices of the ``panels`` lowest-EMD and highest-EMD images (stable: ties by position)."""
    order = np.argsort(emd_per_image, kind="stable")
    k = min(panels, len(order))
    return order[:k], order[::-1][:k]


def plot_distributions(result, path, panels: int = DEFAULT_PANELS) -> Path:
    """Paper Fig. 5: ground-truth vs predicted score distributions of the best and worst images (EMD)."""
    best, worst = best_and_worst(result.emd_per_image, panels)
    columns = max(len(best), 1)
    fig = _figure(3.2 * columns, 5.6)
    scores = np.asarray(result.scores)
    width = 0.4 * (float(np.min(np.diff(scores))) if len(scores) > 1 else 1.0)
    emds = result.emd_per_image
    for row, (label, picks) in enumerate((("best", best), ("worst", worst))):
        for col, index in enumerate(picks):
            ax = fig.add_subplot(2, columns, row * columns + col + 1)
            ax.bar(scores - width / 2, result.true_dist[index], width, label="ground truth", color="0.55")
            ax.bar(scores + width / 2, result.pred_dist[index], width, label="predicted", color="tab:orange")
            ax.set_title(f"{label}: {result.ids[index]}\nEMD {emds[index]:.3f}  "
                         f"mean {result.true_mean[index]:.2f} / {result.pred_mean[index]:.2f}", fontsize=8)
            ax.set_xticks(scores)
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel("probability", fontsize=8)
    if len(best):
        fig.axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Score distributions, {result.split} split (ground truth / predicted mean)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


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


def plot_emd_histogram(result, path, bins: int = 40) -> Path:
    """Histogram of the per-image EMD (r = 1) with its mean (Table I's EMD) marked."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    emds = result.emd_per_image
    ax.hist(emds, bins=min(bins, max(1, len(emds))), color="tab:green", alpha=0.8)
    ax.axvline(float(emds.mean()), color="k", lw=1, ls="--", label=f"mean {emds.mean():.4f}")
    ax.set_xlabel("EMD (r = 1) per image")
    ax.set_ylabel("images")
    ax.set_title(f"{result.split}: n={result.n}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def write_evaluation_plots(result, out_dir, panels: int = DEFAULT_PANELS) -> list[Path]:
    """The three evaluation figures (:data:`PLOT_FILES`) in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    return [plot_distributions(result, out_dir / PLOT_FILES["distributions"], panels),
            plot_mean_scatter(result, out_dir / PLOT_FILES["scatter"]),
            plot_emd_histogram(result, out_dir / PLOT_FILES["emd"])]


# ----------------------------------------------------------------------------- attention (PIL only)

PANEL_HEIGHT = 320
_HEAT_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
# black -> purple -> red -> orange -> pale yellow (an inferno-like ramp, readable in grey too)
_HEAT_COLOURS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], float)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` of values in [0, 1] on an inferno-like ramp."""
    values = np.clip(values, 0.0, 1.0)
    channels = [np.interp(values, _HEAT_STOPS, _HEAT_COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def attention_overlay(image, attn: np.ndarray, alpha: float = 0.55):
    """``image`` (PIL RGB) blended with its attention map, upsampled bicubic like the crop search."""
    from PIL import Image

    from ..model.attention import upsample_map

    width, height = image.size
    up = np.clip(upsample_map(np.asarray(attn, dtype=np.float32), (height, width)), 0, None)
    peak = float(up.max())
    heat = Image.fromarray(heat_colours(up / peak if peak > 0 else up))
    return Image.blend(image.convert("RGB"), heat, alpha)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap font
        return ImageFont.load_default()


def _scaled_box(box: Sequence[int], scale: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1


def attention_figure(view, title: str, tau: float, panel_height: int = PANEL_HEIGHT):
    """Paper Fig. 4 for one photo: the photo, its attention with the tau box, and the foveal view.

    ``view`` is a :class:`gpf.pipeline.scoring.AttentionView`. Returns a PIL image.
    """
    from PIL import Image, ImageDraw

    image = view.image
    scale = panel_height / image.height
    shown = image.resize((max(1, round(image.width * scale)), panel_height), Image.Resampling.LANCZOS)
    overlay = attention_overlay(shown, view.attended.attn)
    draw = ImageDraw.Draw(overlay)
    draw.rectangle(_scaled_box(view.attended.box, scale), outline=(0, 255, 120), width=3)
    fovea = view.fovea.resize((panel_height, panel_height), Image.Resampling.BICUBIC)
    x0, y0, x1, y1 = view.attended.box
    fraction = view.attended.attn_fraction
    held = ("map all zero: whole photo" if view.attended.zero or fraction is None
            else f"box holds {100 * fraction:.1f}%")
    captions = [f"photo {image.width}x{image.height}",
                f"EB attention, tau={tau:g} {held}",
                f"foveal view {view.fovea.width}x{view.fovea.height} of box ({x0},{y0})-({x1},{y1})"]
    panels = [shown, overlay, fovea]
    gap, title_h, caption_h = 12, 34, 24
    title_font, caption_font = _font(18), _font(12)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    slots = [max(p.width, int(measure.textlength(c, font=caption_font)) + 4) for p, c in zip(panels, captions)]
    width = max(sum(slots) + gap * (len(panels) + 1), int(measure.textlength(title, font=title_font)) + 2 * gap)
    canvas = Image.new("RGB", (width, title_h + panel_height + caption_h + gap), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 8), title, fill="black", font=title_font)
    x = gap
    for panel, caption, slot in zip(panels, captions, slots):
        canvas.paste(panel, (x + (slot - panel.width) // 2, title_h))
        draw.text((x, title_h + panel_height + 5), caption, fill="black", font=caption_font)
        x += slot + gap
    return canvas


def save_attention_figure(view, path, title: str, tau: float) -> Path:
    """Write :func:`attention_figure` as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attention_figure(view, title, tau).save(path, format="PNG")
    return path
