"""PNG figures (gpf.pipeline.plots): the evaluation plots (paper Fig. 5 and two diagnostics) and
the attention figure (Fig. 4), read back with PIL."""
from __future__ import annotations

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
    from gpf.pipeline.scoring import AttentionView

    photo = Image.new("RGB", (50, 30), (90, 120, 150))
    attended = Attended(attn=np.zeros((4, 6), np.float16), box=(0, 0, 50, 30), view_box=(0, 0, 30, 50),
                        attn_fraction=None, zero=True)
    figure = attention_figure(AttentionView(photo, photo, attended, photo.resize((64, 64))), "flat", 0.7)
    pixels = np.asarray(figure)
    assert figure.height > 320 and (pixels == (0, 255, 120)).all(axis=-1).any()   # the box is drawn


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

def test_heat_colours_get_brighter_with_the_value_and_clip():
    from gpf.pipeline.plots import heat_colours

    values = np.linspace(0, 1, 101)
    rgb = heat_colours(values).astype(float)
    luminance = rgb @ np.array([0.299, 0.587, 0.114])           # ITU-R BT.601: readable in grey
    assert np.all(np.diff(luminance) > 0)
    assert heat_colours(np.array([-3.0, 7.0])).tolist() == heat_colours(np.array([0.0, 1.0])).tolist()
    assert heat_colours(np.zeros((2, 3))).shape == (2, 3, 3) and heat_colours(values).dtype == np.uint8


def test_attention_overlay_is_brightest_where_the_map_is_hot():
    from gpf.pipeline.plots import attention_overlay

    photo = Image.new("RGB", (120, 80), (100, 100, 100))
    attn = np.zeros((4, 6), np.float32)
    attn[1, 4] = 1.0                                            # cell rows 20..40, columns 80..100
    overlay = attention_overlay(photo, attn)
    assert overlay.size == photo.size
    grey = np.asarray(overlay.convert("L")).astype(float)
    y, x = np.unravel_index(np.argmax(grey), grey.shape)
    assert 20 <= y < 40 and 80 <= x < 100
    assert grey[70, 10] < grey[y, x] - 50                       # far from the cell: the dark end of the ramp
