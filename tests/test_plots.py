"""Figures (gpf.pipeline.plots): the evaluation plots (paper Fig. 5 and two diagnostics) and
the attention figure (Fig. 4), read back with PIL or inspected as matplotlib Figures."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from PIL import Image


def test_best_and_worst_panels_are_the_extremes_of_emd():
    from gpf.pipeline.plots import best_and_worst

    best, worst = best_and_worst(np.array([0.3, 0.1, 0.5, 0.2, 0.4]), 2)
    assert best.tolist() == [1, 3] and worst.tolist() == [2, 4]


def test_figure_of_an_all_zero_map_shows_the_whole_photo():
    from gpf.pipeline.attend import Attended
    from gpf.pipeline.plots import attention_figure

    attended = Attended(attn=np.zeros((4, 6), np.float16), box=(0, 0, 50, 30), view_box=(0, 0, 30, 50),
                        attn_fraction=None, zero=True)
    fig = attention_figure(_view((50, 30), attended=attended), "flat", 0.7)
    assert any("map all zero: box = whole photo" in text for text in _texts(fig))
    assert _boxes(_image_axes(fig)[1]) == [(0, 0, 50, 30)]        # the box is drawn: the whole photo


# ----------------------------------------------------------------------------- evaluation plots

def _result(n: int = 9, classes: int = 10, seed: int = 0):
    """An EvaluationResult of random distributions, its metrics from gpf.model.metrics."""
    from gpf.model.metrics import evaluate
    from gpf.pipeline.evaluation import EvaluationResult

    rng = np.random.default_rng(seed)
    pred = rng.dirichlet(np.ones(classes), n)
    true = rng.dirichlet(np.ones(classes), n)
    scores = tuple(float(s) for s in range(1, classes + 1))
    return EvaluationResult(checkpoint="c.pt", shard_dir="shards", split="test", variant="gpf", backbone="tiny",
                            scores=scores, threshold=5.0, metrics=evaluate(pred, true, 5.0, scores),
                            ids=[f"id{i}" for i in range(n)], pred_dist=pred, true_dist=true)


def test_evaluation_plots_are_three_readable_pngs(tmp_path):
    from gpf.pipeline.plots import write_evaluation_plots

    paths = write_evaluation_plots(_result(), tmp_path / "plots", panels=3)
    assert sorted(p.name for p in paths) == ["distributions.png", "emd_hist.png", "mean_scatter.png"]
    for path in paths:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 200 and im.height > 200
            assert len(np.unique(np.asarray(im.convert("L")))) > 2        # something is drawn


def test_evaluation_plots_of_one_image_and_of_one_bucket_are_drawn(tmp_path):
    from gpf.pipeline.plots import write_evaluation_plots

    assert len(write_evaluation_plots(_result(n=1), tmp_path / "one", panels=4)) == 3
    assert len(write_evaluation_plots(_result(n=3, classes=2), tmp_path / "two")) == 3


def test_evaluation_plots_without_matplotlib_say_how_to_install_it(tmp_path, monkeypatch):
    from gpf.pipeline.plots import PlotError, write_evaluation_plots

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)   # `import` raises ImportError
    with pytest.raises(PlotError, match=r"need matplotlib: pip install 'gpf\[plots\]'"):
        write_evaluation_plots(_result(), tmp_path)
    assert not list(tmp_path.iterdir())


def test_plots_never_touch_pyplot_or_the_global_backend(tmp_path):
    import matplotlib

    from gpf.pipeline.plots import write_evaluation_plots

    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    write_evaluation_plots(_result(), tmp_path)
    assert matplotlib.get_backend() == backend
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


# ----------------------------------------------------------------------------- attention figure

def test_relative_attention_peaks_where_the_map_is_hot():
    from gpf.pipeline.plots import relative_attention

    attn = np.zeros((4, 6), np.float32)
    attn[1, 4] = 3.0                                            # cell rows 20..40, columns 80..100
    rel = relative_attention(attn, (80, 120))
    assert rel.shape == (80, 120) and rel.min() >= 0 and rel.max() == pytest.approx(1.0)
    y, x = np.unravel_index(np.argmax(rel), rel.shape)
    assert 20 <= y < 40 and 80 <= x < 100
    assert rel[70, 10] < 0.05                                   # far from the cell: about nothing
    assert not relative_attention(np.zeros((4, 6), np.float32), (8, 12)).any()


# ----------------------------------------------------------------------------- issue 14, item 13

def _drawn(fig):
    fig.canvas.draw()
    return fig


def _panel_ids(fig) -> dict[str, list[str]]:
    """``{'best': [ids], 'worst': [ids]}`` read from the panel titles ("best: ID\\nEMD ...")."""
    rows: dict[str, list[str]] = {"best": [], "worst": []}
    for ax in fig.axes:
        label, _, image_id = ax.get_title().splitlines()[0].partition(": ")
        rows[label].append(image_id)
    return rows


def _legend_is_outside_the_panels(fig) -> bool:
    assert all(ax.get_legend() is None for ax in fig.axes)       # no legend inside a panel
    assert len(fig.legends) == 1
    box = fig.legends[0].get_window_extent()
    return not any(ax.get_window_extent().overlaps(box) for ax in fig.axes)


@pytest.mark.parametrize("n", range(0, 12))
def test_best_and_worst_are_disjoint_and_at_most_half_each(n):
    from gpf.pipeline.plots import best_and_worst

    emd = np.random.default_rng(n).random(n)
    for panels in (1, 2, 4, 6):
        best, worst = best_and_worst(emd, panels)
        assert not set(best.tolist()) & set(worst.tolist()), (n, panels)
        assert len(worst) == min(panels, n // 2)
        assert len(best) == (min(panels, n // 2) or min(1, n))
        if len(worst):
            assert emd[best].max() <= emd[worst].min()
    assert best_and_worst(np.array([0.4]), 4)[0].tolist() == [0]        # one image: the best, no worst


def test_distributions_of_a_small_split_show_no_image_twice_and_the_legend_covers_no_bar():
    from gpf.pipeline.plots import distributions_figure

    for n, shown in ((1, 1), (3, 1), (5, 2), (6, 3), (9, 4)):
        fig = _drawn(distributions_figure(_result(n=n), panels=4))
        ids = _panel_ids(fig)
        assert not set(ids["best"]) & set(ids["worst"]), ids
        assert len(ids["best"]) == shown and len(ids["worst"]) == (0 if n == 1 else shown)
        assert _legend_is_outside_the_panels(fig)


def test_emd_histogram_counts_have_integer_ticks():
    from gpf.pipeline.plots import emd_histogram_figure

    for n in (1, 3, 6, 9):
        ax = _drawn(emd_histogram_figure(_result(n=n))).axes[0]
        lo, hi = ax.get_ylim()
        ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
        labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert labels and all(re.fullmatch(r"\d+", text) for text in labels), labels


def test_evaluate_plots_of_a_six_image_split_from_the_cli(tmp_path_factory, tmp_path, monkeypatch):
    """`gpf evaluate --split train --plots` on the fixture's 6 training photos, as the user ran it."""
    from helpers.cli import invoke
    from helpers.evaluation import build_eval_data

    import gpf.pipeline.plots as plots

    data = build_eval_data(tmp_path_factory)
    figures = {}
    save = plots._save

    def keep(fig, path):
        figures[path.name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    run = invoke(["evaluate", "--checkpoint", data["gpf"], "--shards", data["shards"], "--split", "train",
                  "--plots", tmp_path / "plots", "--device", "cpu", "--workers", "0", "--quiet"])
    assert run.exit_code == 0, run.output
    assert sorted(figures) == ["distributions.png", "emd_hist.png", "mean_scatter.png"]
    assert all((tmp_path / "plots" / name).is_file() for name in figures)

    ids = _panel_ids(_drawn(figures["distributions.png"]))
    assert len(ids["best"]) == len(ids["worst"]) == 3 and not set(ids["best"]) & set(ids["worst"]), ids
    assert _legend_is_outside_the_panels(figures["distributions.png"])
    hist = _drawn(figures["emd_hist.png"]).axes[0]
    assert all(float(t).is_integer() for t in hist.get_yticks())


# ----------------------------------------------------------------------------- issue 14, item 12: attention figure

def _view(size, box=None, attended=None, fovea_size=64, seed=0):
    """An AttentionView of a random ``size`` photo: a hot attention cell, ``box`` (default: the middle third)."""
    from gpf.pipeline.attend import Attended
    from gpf.pipeline.images import foveal_view
    from gpf.pipeline.scoring import AttentionView

    width, height = size
    photo = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    if attended is None:
        box = box or (width // 3, height // 3, 2 * width // 3, 2 * height // 3)
        attn = np.full((4, 8), 0.1, np.float32)
        attn[1:3, 3:5] = 1.0
        attended = Attended(attn=attn, box=box, view_box=(0, 0, 1, 1), attn_fraction=0.72, zero=False)
    periph = photo.resize((max(1, width // 4), max(1, height // 4)))
    return AttentionView(photo, periph, attended, foveal_view(photo, attended.box, fovea_size))


def _texts(fig) -> list[str]:
    """Every text of the figure (title, note, captions, labels), line breaks as spaces."""
    from matplotlib.text import Text

    return [" ".join(t.get_text().split()) for t in fig.findobj(Text) if t.get_text()]


def _image_axes(fig) -> list:
    """The panels: axes showing an image, not the colour scale."""
    return [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]


def _boxes(ax) -> list[tuple[int, int, int, int]]:
    return [(round(r.get_x()), round(r.get_y()), round(r.get_x() + r.get_width()), round(r.get_y() + r.get_height()))
            for r in ax.patches]


def _displayed_aspect(ax) -> float:
    box = ax.get_window_extent()
    return box.width / box.height


@pytest.mark.parametrize("suffix, fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".JPEG", "JPEG")])
def test_attention_figure_is_written_in_the_format_its_extension_names(tmp_path, suffix, fmt):
    from gpf.pipeline.plots import save_attention_figure

    out = save_attention_figure(_view((120, 90)), tmp_path / f"a{suffix}", "photo", 0.7)
    with Image.open(out) as im:
        assert im.format == fmt and im.width > 300


def test_attention_figure_as_pdf_and_svg(tmp_path):
    from gpf.pipeline.plots import save_attention_figure

    assert save_attention_figure(_view((60, 40)), tmp_path / "a.pdf", "p", 0.7).read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in save_attention_figure(_view((60, 40)), tmp_path / "a.svg", "p", 0.7).read_bytes()[:2000]


@pytest.mark.parametrize("name", ["a.xyz", "a.gif", "noextension"])
def test_unknown_figure_extension_is_refused_naming_the_allowed_ones(tmp_path, name):
    from gpf.errors import OptionError
    from gpf.pipeline.plots import FIGURE_FORMATS, FigureFormatError, PlotError, save_attention_figure

    with pytest.raises(FigureFormatError) as caught:
        save_attention_figure(_view((60, 40)), tmp_path / "sub" / name, "p", 0.7)
    assert isinstance(caught.value, PlotError) and isinstance(caught.value, OptionError)
    assert caught.value.param == "out" and all(ext in str(caught.value) for ext in FIGURE_FORMATS)
    assert not (tmp_path / "sub").exists()


def test_attention_panel_has_a_relative_colour_scale():
    from gpf.pipeline.plots import attention_figure

    fig = _drawn(attention_figure(_view((120, 90)), "photo", 0.7))
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and len(_image_axes(fig)) == 3
    scale = bars[0]._colorbar
    assert (scale.vmin, scale.vmax) == (0.0, 1.0) and "relative attention" in scale.ax.get_ylabel()
    overlay = _image_axes(fig)[1].get_images()[-1]
    assert overlay.get_clim() == (0.0, 1.0) and overlay.get_cmap().name == scale.cmap.name


def test_single_variant_figure_says_the_attention_is_not_used_and_draws_no_fovea():
    from gpf.pipeline.plots import attention_figure

    fig = _drawn(attention_figure(_view((120, 90)), "photo", 0.7, variant="single"))
    texts = " ".join(_texts(fig))
    assert "not used by the single variant" in texts and "only the whole photo" in texts
    assert "foveal view:" not in texts
    panels = _image_axes(fig)
    assert len(panels) == 2 and not _boxes(panels[1])             # photo and attention: no tau box, no crop


def test_random_variant_figure_shows_the_random_crops_not_the_tau_box():
    from gpf.pipeline.plots import attention_figure

    crops = ((0, 0, 40, 40), (60, 30, 100, 70))
    fig = _drawn(attention_figure(_view((120, 90)), "photo", 0.7, variant="random", crop_boxes=crops))
    texts = " ".join(_texts(fig))
    assert "2 seeded random" in texts and "not the tau box" in texts and "not used by the random variant" in texts
    photo, attention, crop = _image_axes(fig)
    assert _boxes(photo) == list(crops) and not _boxes(attention)
    assert tuple(crop.get_images()[0].get_extent()) == (0, 40, 40, 0)   # the first crop, where it lies


@pytest.mark.parametrize("variant", [None, "gpf", "pf"])
def test_attention_variants_and_stage1_draw_the_tau_box_and_no_note(variant):
    from gpf.pipeline.plots import attention_figure

    fig = attention_figure(_view((120, 90), box=(10, 20, 70, 50)), "photo", 0.7, variant=variant)
    assert not any("not used" in text for text in _texts(fig))
    photo, attention, fovea = _image_axes(fig)
    assert _boxes(attention) == [(10, 20, 70, 50)]
    assert tuple(fovea.get_images()[0].get_extent()) == (10, 70, 50, 20)  # the fovea at the box's aspect


def test_a_panorama_gives_a_capped_figure_and_unstretched_panels():
    from gpf.pipeline.plots import DPI, MAX_FIGURE_PX, attention_figure

    box = (100, 10, 300, 90)                                     # 200x80: 2.5:1
    fig = _drawn(attention_figure(_view((1600, 100), box=box), "panorama", 0.7))
    width_px, height_px = fig.get_size_inches() * DPI
    assert width_px <= MAX_FIGURE_PX and height_px <= MAX_FIGURE_PX
    panels = _image_axes(fig)
    for ax, aspect in zip(panels, (16.0, 16.0, 2.5)):
        x0, x1, y1, y0 = ax.get_images()[0].get_extent()
        assert ax.get_aspect() == 1.0 and (x1 - x0) / (y1 - y0) == pytest.approx(aspect)
        assert _displayed_aspect(ax) == pytest.approx(aspect, rel=0.02)   # as drawn, not stretched
    assert panels[0].get_window_extent().height > 60             # stacked, not a 16:1 row of slivers


def test_a_tall_photo_keeps_its_aspect_too():
    from gpf.pipeline.plots import DPI, MAX_FIGURE_PX, attention_figure

    fig = _drawn(attention_figure(_view((100, 1600), box=(10, 100, 90, 300)), "tower", 0.7))
    assert fig.get_size_inches()[0] * DPI <= MAX_FIGURE_PX
    for ax, aspect in zip(_image_axes(fig), (1 / 16, 1 / 16, 0.4)):
        assert _displayed_aspect(ax) == pytest.approx(aspect, rel=0.03)
