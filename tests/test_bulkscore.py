"""Bulk scoring with the local engine (pipeline/bulkscore.py, `gpf predict LIST --out DIR`): the photo
list and its ids, chunks, resume, refusals, and the same scores as `gpf predict --parquet`.
The photos are the evaluation fixture's (tests/helpers/evaluation.py) plus broken files."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from helpers.bulk import BROKEN, MISSING, chunk_files, chunk_rows, photo_collection, photo_list
from helpers.cli import invoke
from helpers.evaluation import build_eval_data
from gpf.pipeline.bulkscore import BulkScoringError, plan_chunks, read_photo_list

BULK = ["--device", "cpu", "--quiet", "--batch-size", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_eval_data(tmp_path_factory)


@pytest.fixture(scope="module")
def photos(data, tmp_path_factory):
    return photo_collection(data, tmp_path_factory.mktemp("photos"))


# ----------------------------------------------------------------------------- the list

def test_ids_are_paths_relative_to_the_list_urls_as_given_and_unique(tmp_path):
    outside = tmp_path.parent / "elsewhere.jpg"
    lines = ["file,other", "a/x.jpg,1", "a/x.jpg,2", f"{tmp_path / 'b' / 'y.jpg'},3", f"{outside},4",
             "s3://bucket/z.jpg,5", "a/x.jpg#2,6"]
    listing = tmp_path / "list.csv"
    listing.write_text("\n".join(lines) + "\n")
    photos = read_photo_list(listing)
    assert [p.id for p in photos] == ["a/x.jpg", "a/x.jpg#3", "b/y.jpg", str(outside), "s3://bucket/z.jpg",
                                      "a/x.jpg#2"]
    assert [str(p.source) for p in photos[:3]] == [str(tmp_path / "a/x.jpg")] * 2 + [str(tmp_path / "b/y.jpg")]
    assert photos[4].source == "s3://bucket/z.jpg"


def test_a_parquet_list_and_a_named_column(tmp_path):
    import pyarrow as pa

    listing = tmp_path / "list.parquet"
    pq.write_table(pa.table({"photo": ["p/1.jpg", "p/2.jpg"], "path": ["x", "y"]}), listing)
    assert [p.id for p in read_photo_list(listing, "photo")] == ["p/1.jpg", "p/2.jpg"]
    assert [p.id for p in read_photo_list(listing)] == ["x", "y"]        # 'path' found by name


def test_an_unknown_column_is_answered_with_close_matches(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("photo_path,score\na.jpg,1\n")
    with pytest.raises(BulkScoringError, match="no column 'photopath'; did you mean photo_path"):
        read_photo_list(listing, "photopath")
    with pytest.raises(BulkScoringError, match="no path column .*name it with --path-column"):
        read_photo_list(listing)


def test_an_empty_path_names_its_row(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("path\na.jpg\n\"\"\nb.jpg\n")
    with pytest.raises(BulkScoringError, match="row 3 has no path"):
        read_photo_list(listing)


def test_chunks_cover_the_list_in_order():
    items = list(range(10))
    chunks = plan_chunks(items, 4)
    assert [c.photos for c in chunks] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert [c.name for c in chunks] == ["scores-000000.parquet", "scores-000001.parquet", "scores-000002.parquet"]


# ----------------------------------------------------------------------------- runs

def test_bulk_scores_equal_plain_predict_with_failures_as_rows(data, photos, tmp_path):
    out = tmp_path / "bulk"
    run = invoke(["predict", photos, "--checkpoint", data["gpf"], "--out", out, "--chunk-size", "4", *BULK])
    assert run.exit_code == 0, run.output
    assert "chunks: 3 written, 0 already done, 3 in all" in run.output
    single = tmp_path / "single.parquet"
    plain = invoke(["predict", photos, "--checkpoint", data["gpf"], "--parquet", single, *BULK])
    assert plain.exit_code == 0, plain.output
    rows, reference = chunk_rows(out), pq.read_table(single).to_pylist()
    assert rows == reference                          # the same ids, paths, scores, boxes, statuses and errors
    statuses = {r["id"]: r["status"] for r in rows}
    assert {k: statuses[k] for k in BROKEN} == BROKEN and list(statuses.values()).count("ok") == 10
    assert all(r["error"] for r in rows if r["status"] != "ok")


def test_a_rerun_scores_only_the_missing_chunk_and_other_settings_are_refused(data, photos, tmp_path):
    out = tmp_path / "bulk"
    listing = photo_list(photos, "resume.csv")
    args = ["predict", listing, "--checkpoint", data["gpf"], "--out", out, "--chunk-size", "4", *BULK]
    assert invoke(args).exit_code == 0
    first = chunk_files(out)
    assert len(first) == 4                            # 12 files + a missing one + a repeated row = 14 rows
    rows = chunk_rows(out)
    assert rows[-2]["id"] == MISSING and rows[-2]["status"] == "missing"
    # the same photo in another batch: the same score up to float rounding (batches decide the last bits)
    assert rows[-1]["id"] == rows[0]["id"] + "#2" and rows[-1]["mean"] == pytest.approx(rows[0]["mean"], abs=1e-6)
    (out / "scores-000002.parquet").unlink()
    again = invoke(args)
    assert "chunks: 1 written, 3 already done, 4 in all" in again.output
    assert chunk_files(out) == first
    refused = invoke(args[:-len(BULK) - 2] + ["--chunk-size", "5", *BULK])
    assert refused.exit_code == 1 and "holds scores of another run (chunk_size: 4 -> 5)" in refused.output


def test_bulk_options_are_checked(data, photos, tmp_path):
    run = invoke(["predict", photos, photos, "--checkpoint", data["gpf"], "--out", tmp_path / "o", *BULK])
    assert run.exit_code == 2 and "--out takes one list (CSV/Parquet) or folder; got 2 inputs" in run.output
    run = invoke(["predict", photos, "--checkpoint", data["gpf"], "--engine", "ray", *BULK])
    assert run.exit_code == 2 and "give --out DIR" in run.output
    run = invoke(["predict", photos, "--checkpoint", data["gpf"], "--out", tmp_path / "o", "--json", *BULK])
    assert run.exit_code == 2 and "drop --json/--parquet" in run.output
