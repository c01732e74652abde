"""`gpf predict` and the Python scoring API (`Scorer`) on the shared session data of tests/helpers/evaluation.py.

Independent references: the boxes `gpf preprocess` stored in the shards' Parquet,
the mean scores `evaluate_checkpoint` computes from the shards, and images
rotated by hand for the EXIF checks.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers.evaluation import EXIF_ID, N_IMAGES, TEST_IDS, build_eval_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_eval_data(tmp_path_factory)


@pytest.fixture(scope="module")
def scorer(data):
    from gpf.pipeline.scoring import Scorer

    return Scorer.from_checkpoint(data["gpf"], device="cpu", workers=2)


@pytest.fixture(scope="module")
def shard_rows(data):
    rows = pd.read_parquet(data["shards"] / "meta")
    return rows.set_index("id")


def _image(data, image_id: str):
    return data["ava"] / "images" / f"{image_id}.jpg"


def test_boxes_equal_the_shards_and_means_match_evaluate(data, scorer, shard_rows):
    from gpf.pipeline.evaluation import evaluate_checkpoint

    paths = [_image(data, str(800000 + i)) for i in range(N_IMAGES)]
    results = list(scorer.score_many(paths, batch_size=6))
    assert [r.id for r in results] == [p.stem for p in paths]           # input order kept
    for result in results:
        row = shard_rows.loc[result.id]
        assert result.ok and result.box == (row.x0, row.y0, row.x1, row.y1), result.id
        assert result.size == (row.width, row.height)
        assert result.attn_fraction == pytest.approx(row.attn_fraction, abs=1e-6)
        assert sum(result.distribution) == pytest.approx(1.0)
        assert result.high == (result.mean > 5.0)
    assert shard_rows.loc[EXIF_ID, "width"] > shard_rows.loc[EXIF_ID, "height"]   # upright size

    evaluation = evaluate_checkpoint(data["gpf"], data["shards"], workers=0, device="cpu")
    from_shards = dict(zip(evaluation.ids, evaluation.pred_mean))
    by_id = {r.id: r for r in results}
    for image_id in TEST_IDS:
        assert by_id[image_id].mean == pytest.approx(from_shards[image_id], abs=0.05), image_id
    # 0.05 is tight: the means of different photos are far further apart
    assert np.ptp(list(from_shards.values())) > 0.4


def test_random_variant_averages_the_crops_the_shards_store(data):
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.pipeline.scoring import Scorer

    evaluation = evaluate_checkpoint(data["random"], data["shards"], workers=0, device="cpu")
    from_shards = dict(zip(evaluation.ids, evaluation.pred_mean))
    same_crops = Scorer.from_checkpoint(data["random"], device="cpu", random_crops=2)
    one_crop = Scorer.from_checkpoint(data["random"], device="cpu", random_crops=1)
    ids = TEST_IDS[:6]
    paths = [_image(data, i) for i in ids]
    averaged = {r.id: r for r in same_crops.score_many(paths)}
    single = {r.id: r for r in one_crop.score_many(paths)}
    for image_id in ids:
        assert averaged[image_id].mean == pytest.approx(from_shards[image_id], abs=0.05)
        assert averaged[image_id].box is None                # no attention crop in this variant
    assert any(abs(single[i].mean - averaged[i].mean) > 1e-4 for i in ids)


def test_single_variant_uses_the_peripheral_view_only(data):
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.pipeline.scoring import Scorer

    evaluation = evaluate_checkpoint(data["single"], data["shards"], workers=0, device="cpu")
    from_shards = dict(zip(evaluation.ids, evaluation.pred_mean))
    results = list(Scorer.from_checkpoint(data["single"], device="cpu").score_many(
        [_image(data, i) for i in TEST_IDS]))
    for result in results:
        assert result.box is None and result.mean == pytest.approx(from_shards[result.id], abs=0.05)


def test_pil_image_gets_exif_orientation_like_a_path(data, scorer, tmp_path):
    upright = np.array(Image.open(_image(data, "800003")).convert("RGB"))
    upright_png, sideways_png = tmp_path / "upright.png", tmp_path / "sideways.png"
    Image.fromarray(upright).save(upright_png)
    exif = Image.Exif()
    exif[0x0112] = 8      # viewers turn the stored pixels 90 degrees counter-clockwise
    Image.fromarray(np.rot90(upright, -1).copy()).save(sideways_png, exif=exif)

    reference = scorer.score(upright_png)
    for source in (sideways_png, Image.open(sideways_png), Image.open(sideways_png).convert("RGBA")):
        result = scorer.score(source)
        assert result.size == reference.size == (upright.shape[1], upright.shape[0])
        assert result.box == reference.box
        assert result.mean == pytest.approx(reference.mean, abs=1e-9)
    assert scorer.score(Image.open(sideways_png)).id == "sideways"


def test_score_raises_image_error_and_score_many_reports_it(data, scorer, tmp_path):
    from gpf.pipeline.images import ImageError

    with pytest.raises(ImageError) as info:
        scorer.score(tmp_path / "nope.jpg")
    assert info.value.status == "missing"
    results = list(scorer.score_many(iter([tmp_path / "nope.jpg", _image(data, "800001")]), batch_size=1))
    assert [r.status for r in results] == ["missing", "ok"] and "nope.jpg" in results[0].error


@pytest.fixture
def mixed_folder(data, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for image_id in TEST_IDS[:3]:
        shutil.copy(_image(data, image_id), folder / f"{image_id}.jpg")
    shutil.copy(_image(data, TEST_IDS[3]), folder / "sub" / f"{TEST_IDS[3]}.JPG")
    good = _image(data, TEST_IDS[4]).read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 3])      # truncated download
    (folder / "readme.txt").write_text("not a photo")             # no image extension: not picked up
    return folder


def test_cli_folder_with_a_corrupt_file_scores_the_others(data, mixed_folder, shard_rows, tmp_path):
    from gpf.cli.predict import predict

    out = tmp_path / "scores.parquet"
    run = CliRunner().invoke(predict, ["--checkpoint", str(data["gpf"]), str(mixed_folder), "--json",
                                       "--parquet", str(out), "--device", "cpu", "--quiet", "--batch-size", "2"])
    assert run.exit_code == 0, run.output
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    by_id = {line["id"]: line for line in lines}
    # ids: the path below the folder given, with its extension (docs/evaluation.md, "Ids")
    photos = {f"{i}.jpg": i for i in TEST_IDS[:3]} | {f"sub/{TEST_IDS[3]}.JPG": TEST_IDS[3]}
    assert set(by_id) == {*photos, "cut.jpg"}
    cut = by_id["cut.jpg"]
    assert cut["status"] in ("truncated", "decode_error") and "cut.jpg" in cut["error"]
    assert cut["mean"] is None
    for photo, image_id in photos.items():
        row = shard_rows.loc[image_id]
        assert by_id[photo]["status"] == "ok"
        assert [by_id[photo][k] for k in ("x0", "y0", "x1", "y1")] == [row.x0, row.y0, row.x1, row.y1]
        assert len(by_id[photo]["distribution"]) == 10
    assert "cut.jpg" in run.stderr and "scored 4 of 5" in run.stderr

    table = pd.read_parquet(out).set_index("id")
    assert len(table) == 5 and table.loc["cut.jpg", "status"] == cut["status"]
    assert np.isnan(table.loc["cut.jpg", "mean"])
    first = f"{TEST_IDS[0]}.jpg"
    assert table.loc[first, "mean"] == pytest.approx(by_id[first]["mean"])
    assert list(table.loc[first, "distribution"]) == pytest.approx(by_id[first]["distribution"])


def test_cli_table_output_and_exit_code_when_nothing_scores(data, tmp_path):
    from gpf.cli.predict import predict

    good = CliRunner().invoke(predict, ["--checkpoint", str(data["gpf"]), str(_image(data, TEST_IDS[0])),
                                        "--device", "cpu", "--quiet"])
    assert good.exit_code == 0 and "mean" in good.stdout.splitlines()[0]
    assert TEST_IDS[0] in good.stdout.splitlines()[1]

    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    bad = CliRunner().invoke(predict, ["--checkpoint", str(data["gpf"]), str(tmp_path / "bad.jpg"),
                                       str(tmp_path / "gone.jpg"), "--device", "cpu", "--quiet"])
    assert bad.exit_code == 1 and "no image could be scored" in bad.stderr
    assert "Traceback" not in bad.output


def test_cli_refuses_a_checkpoint_without_the_attention_model(data):
    from gpf.cli.predict import predict

    run = CliRunner().invoke(predict, ["--checkpoint", str(data["stage1"]), str(_image(data, TEST_IDS[0])),
                                       "--device", "cpu"])
    assert run.exit_code == 1 and "Traceback" not in run.output
    assert "stage-1 checkpoint" in run.output and "gpf train stage2" in run.output
