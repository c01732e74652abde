"""`gpf attention`: the paper's Fig. 4 panels for one photo, with stage-1 and stage-2 checkpoints."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers.evaluation import TEST_IDS, build_eval_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_eval_data(tmp_path_factory)


def _invoke(*args):
    from gpf.cli.attention import attention

    return CliRunner().invoke(attention, [*map(str, args), "--device", "cpu"])


def _box_of(data, image_id):
    row = pd.read_parquet(data["shards"] / "meta").set_index("id").loc[image_id]
    return f"{row.x0},{row.y0},{row.x1},{row.y1}"


def _check_png(path, min_width):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= min_width and im.height > 100
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("kind", ["gpf", "stage1"])
def test_writes_the_three_panels_with_the_shards_box(data, tmp_path, kind):
    image_id = TEST_IDS[1]
    out = tmp_path / f"{kind}.png"
    from gpf.shards.manifest import read_manifest

    extra = ["--eb-layer", read_manifest(data["shards"]).run.eb_layer] if kind == "stage1" else []
    run = _invoke(data["ava"] / "images" / f"{image_id}.jpg", "--checkpoint", data[kind], "--out", out, *extra)
    assert run.exit_code == 0, run.output
    # the stage-1 model that made the shards, with the same tau and EB layer, finds the same box
    assert f"box {_box_of(data, image_id)}" in run.output
    assert ("predicted mean" in run.output) == (kind == "gpf")
    pixels = _check_png(out, min_width=3 * 300)      # three 320 px high panels side by side
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100   # drawn images, not a blank canvas


def test_missing_or_corrupt_image_is_one_line_and_non_zero(data, tmp_path):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))
    for name in ("missing.jpg", "corrupt.jpg"):
        run = _invoke(tmp_path / name, "--checkpoint", data["gpf"], "--out", tmp_path / "x.png")
        assert run.exit_code == 1 and "Traceback" not in run.output
        assert len(run.output.strip().splitlines()) == 1 and name in run.output
        assert not (tmp_path / "x.png").exists()
        if name == "missing.jpg":     # a photo named on the command line: no dataset advice
            assert "check the path" in run.output and "label" not in run.output


def test_stage2_attention_settings_cannot_be_overridden(data, tmp_path):
    run = _invoke(data["ava"] / "images" / f"{TEST_IDS[0]}.jpg", "--checkpoint", data["gpf"],
                  "--out", tmp_path / "x.png", "--tau", "0.5")
    assert run.exit_code == 1 and "tau" in run.output and "Traceback" not in run.output


def test_stage1_tau_changes_the_box(data, tmp_path):
    image = data["ava"] / "images" / f"{TEST_IDS[2]}.jpg"
    boxes = []
    for tau in ("0.3", "0.95"):
        run = _invoke(image, "--checkpoint", data["stage1"], "--out", tmp_path / f"{tau}.png", "--tau", tau)
        assert run.exit_code == 0, run.output
        x0, y0, x1, y1 = map(int, run.output.split("box ")[1].split(")")[0].split(","))
        boxes.append((x1 - x0) * (y1 - y0))
    assert boxes[0] < boxes[1]        # more attention needs a larger box


# ----------------------------------------------------------------------------- issue 14, item 12

def _photo(data, index=1):
    return data["ava"] / "images" / f"{TEST_IDS[index]}.jpg"


@pytest.mark.parametrize("name, fmt", [("a.png", "PNG"), ("a.jpg", "JPEG")])
def test_out_is_written_in_the_format_its_extension_names(data, tmp_path, name, fmt):
    from helpers.cli import invoke

    run = invoke(["attention", _photo(data), "--checkpoint", data["gpf"], "--out", tmp_path / name,
                  "--device", "cpu"])
    assert run.exit_code == 0, run.output
    with Image.open(tmp_path / name) as im:
        assert im.format == fmt


def test_unknown_out_extension_is_refused_in_one_line_before_any_work(data, tmp_path, monkeypatch):
    from helpers.cli import refused

    import gpf.pipeline.scoring as scoring

    monkeypatch.setattr(scoring, "explain_photo", lambda *a, **k: pytest.fail("the photo was explained"))
    line = refused(["attention", _photo(data), "--checkpoint", data["gpf"], "--out", tmp_path / "a.xyz",
                    "--device", "cpu"], "'.xyz'", "--out", ".png", ".jpg", ".pdf", ".svg")
    assert "give --out a name" in line and not (tmp_path / "a.xyz").exists()


def _figure_of(data, tmp_path, monkeypatch, variant):
    """Run `gpf attention` on a ``variant`` checkpoint; the Figure it drew and the command's output."""
    from helpers.cli import invoke

    import gpf.pipeline.plots as plots

    drawn = {}
    build = plots.attention_figure

    def keep(*args, **kwargs):
        drawn["fig"] = build(*args, **kwargs)
        return drawn["fig"]

    monkeypatch.setattr(plots, "attention_figure", keep)
    run = invoke(["attention", _photo(data), "--checkpoint", data[variant], "--out", tmp_path / f"{variant}.png",
                  "--device", "cpu"])
    assert run.exit_code == 0, run.output
    from matplotlib.text import Text

    texts = " ".join(" ".join(t.get_text().split()) for t in drawn["fig"].findobj(Text))
    return drawn["fig"], texts, run.output


def test_single_checkpoint_figure_says_the_fovea_is_not_used(data, tmp_path, monkeypatch):
    fig, texts, output = _figure_of(data, tmp_path, monkeypatch, "single")
    assert "not used by the single-frozen variant" in texts and "foveal view:" not in texts
    assert "single-frozen variant" in output and "box " not in output and "predicted mean" in output
    panels = [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 and not panels[1].patches               # no tau box


def test_random_checkpoint_figure_shows_its_random_crops(data, tmp_path, monkeypatch):
    from gpf.pipeline.images import random_crop_boxes
    from gpf.pipeline.scoring import DEFAULT_RANDOM_CROPS, Scorer, load_source

    fig, texts, output = _figure_of(data, tmp_path, monkeypatch, "random")
    assert "random variant" in texts and "not the tau box" in texts
    assert f"{DEFAULT_RANDOM_CROPS} random crops" in output and "box " not in output
    scorer = Scorer.from_checkpoint(data["random"], "cpu")
    upright = load_source(_photo(data), None)[0].size                 # the fixture's photo has an EXIF rotation
    expected = random_crop_boxes(upright, DEFAULT_RANDOM_CROPS, scorer.view_size, scorer.seed, TEST_IDS[1])
    photo = next(ax for ax in fig.axes if ax.get_images())
    drawn = [(round(r.get_x()), round(r.get_y()), round(r.get_x() + r.get_width()), round(r.get_y() + r.get_height()))
             for r in photo.patches]
    assert drawn == [tuple(b) for b in expected]                     # the crops the scorer averages
