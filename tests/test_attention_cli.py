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
