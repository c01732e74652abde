"""A new user's first hour with their own photos and a CSV (issue 14, the folder source's items).

Every test runs ``gpf train stage1 folder`` / ``gpf preprocess folder`` the way a user
does (in-process CliRunner, tests/helpers/cli.py) on a tiny folder written here: small
JPEGs and a label CSV in the folder source's format (docs/datasets.md).

* 1 — a misspelt count column (``c1O``) is refused naming it and what was expected; the
  columns read as score buckets and the ignored ones are printed; the column -> bucket
  mapping is in the manifest and in every shard's Parquet metadata.
* 2 — CSV paths relative to the working folder instead of the CSV's: one line naming an
  example path as resolved, the rule and ``--image-root``; nothing written; a run that
  wrote nothing has no complete manifest; stage 1 writes the file it names.
* 3 — ``--path-column``, ``--id-column``, ``--count-columns``, ``--test-size`` reach both
  commands and are refused for AVA / Photo.net.
* 6 — the first unusable label rows are shown as ``file:line: problem``, with where the
  rest are; the Parquet holds one location per error and the image path where known.
* 8 — a semicolon-separated CSV is read; an unreadable header is shown as read.
* 14 — a validation split under 30 images is warned about, naming ``--val-size``.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers.ava import photo_like
from helpers.cli import invoke, refused

from gpf.model.checkpoint import load_checkpoint
from gpf.pipeline.preprocess import SCORE_COLUMNS_KEY
from gpf.pipeline.sources import load_folder
from gpf.shards.manifest import read_manifest

N_PHOTOS = 57                     # the size of the user's trial: 3 validation images by default
COUNTS = [f"c{k}" for k in range(1, 11)]
BAD_ROWS = [                      # (cells after the path, what the problem says)
    ("x,1,1,1,1,1,1,1,1,1,", "'c1' is 'x'"),
    ("1,1,1", "row has 4 fields"),
    ("0,0,0,0,0,0,0,0,0,0,", "all 10 vote counts are 0"),
    ("1,-3,1,1,1,1,1,1,1,1,", "'c2' is -3"),
    ("1,1,1,1,1,1,1,1,1,2.5,", "'c10' is '2.5'"),
    ("1,1,1,1,1,1,1,1,1,one,", "'c10' is 'one'"),
    ("1,1,1,1,1,1,1,1,1,1,1,1", "row has 13 fields"),
]


def votes(k: int) -> list[int]:
    rng = np.random.default_rng(k)
    counts = rng.integers(0, 6, 10)
    counts[k % 10] += 3
    return [int(v) for v in counts]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """``data/photos/pNN.jpg``: N_PHOTOS small JPEGs."""
    data = tmp_path_factory.mktemp("first_hour") / "data"
    (data / "photos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(N_PHOTOS):
        size = (48, 36) if k % 2 else (36, 48)
        Image.fromarray(photo_like(*size, rng)).save(data / "photos" / f"p{k:02d}.jpg", quality=90)
    return data


def write_labels(path, header, rows, delimiter=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([delimiter.join(header)] + [delimiter.join(r) for r in rows]) + "\n")
    return path


def good_rows(prefix="photos/", n=N_PHOTOS, extra=("",)):
    return [[f"{prefix}p{k:02d}.jpg", *map(str, votes(k)), *extra] for k in range(n)]


def stage1_args(csv_path, run, *extra):
    return ["train", "stage1", "folder", csv_path, "--backbone", "tiny", "--weights", "none", "--out", run,
            "--view-size", 32, "--epochs", 1, "--batch-size", 8, "--workers", 0, "--device", "cpu",
            "--no-tensorboard", *extra]


def preprocess_args(csv_path, out, *extra):
    return ["preprocess", "folder", csv_path, "--out", out, "--backbone", "tiny", "--weights", "none",
            "--view-size", 32, "--workers", 1, "--batch-size", 8, "--device", "cpu", "--quiet", *extra]


@pytest.fixture(scope="module")
def labels(photos):
    """The user's CSV: c1..c10, a 'comment' column gpf does not read, 57 good rows, 7 bad ones."""
    rows = good_rows(extra=("nice",))
    for k, (cells, _) in enumerate(BAD_ROWS):
        rows.append([f"photos/bad{k}.jpg", *cells.rstrip(",").split(",")]
                    + ([""] if cells.endswith(",") else []))
    return write_labels(photos / "labels.csv", ["path", *COUNTS, "comment"], rows)


def bad_lines():
    """1-based CSV lines of BAD_ROWS (after the header and the good rows)."""
    return [N_PHOTOS + 2 + k for k in range(len(BAD_ROWS))]


# ----------------------------------------------------------------------------- item 1: count columns

TYPO_HEADER = ["path", *COUNTS[:9], "c1O"]


@pytest.mark.parametrize("command", ["stage1", "preprocess"])
def test_a_misspelt_count_column_is_refused_naming_it_and_the_expected_name(photos, tmp_path, command):
    csv_path = write_labels(tmp_path / "typo.csv", TYPO_HEADER, good_rows(prefix=f"{photos}/photos/", extra=()))
    args = (stage1_args(csv_path, tmp_path / "run") if command == "stage1"
            else preprocess_args(csv_path, tmp_path / "shards"))
    message = refused(args, "'c1O'", "'c10'", "c1..c9", "--count-columns")
    assert str(csv_path) in message and "count_columns" not in message
    assert not (tmp_path / "run").exists() and not (tmp_path / "shards").exists()


@pytest.mark.parametrize("header, given, words", [
    (TYPO_HEADER, None, ["'c1O'", "'c10'"]),
    (["path", *COUNTS[:9], "c11"], None, ["c10 missing", "'c11'"]),
    (TYPO_HEADER, ",".join(COUNTS), ["'c10'", "not in the header", "did you mean 'c1O'"]),
    (["path", *COUNTS], ",".join(COUNTS[:9]), ["'c10'", "not in --count-columns"]),
    (["path", "c1", "c2", "votes_3"], None, ["named in 2 ways"]),
    (["path", "1", "2", "3", "5"], None, ["do not step evenly", "from 3 to 5"]),
])
def test_count_columns_that_are_not_one_scale_are_refused(photos, tmp_path, header, given, words):
    rows = [[f"{photos}/photos/p00.jpg"] + ["1"] * (len(header) - 1)]
    csv_path = write_labels(tmp_path / "l.csv", header, rows)
    extra = ["--count-columns", given] if given else []
    refused(preprocess_args(csv_path, tmp_path / "shards", *extra), *words)


def test_stage1_prints_the_columns_it_reads_the_bad_rows_and_the_small_validation_split(labels, tmp_path):
    run = tmp_path / "run"
    result = invoke(stage1_args(labels, run))
    assert result.exit_code == 0, result.output
    out = result.output
    # item 1: which columns are which score bucket, which are ignored
    assert "votes per score bucket from columns c1 -> 1, c2 -> 2" in out and "c10 -> 10" in out
    assert "(10 buckets, high/low threshold 5.5)" in out and "ignored columns: comment" in out
    # item 14: 57 rows -> 3 validation images, said with the option that changes it
    assert "validation split has only 3 image(s)" in out and "--val-size" in out
    # item 6: the first five bad rows as file:line: problem, and where all of them are
    lines = bad_lines()
    for line, (_, problem) in zip(lines[:5], BAD_ROWS[:5]):
        assert f"{labels}:{line}: " in out and problem in out
    assert f"{labels}:{lines[5]}:" not in out
    assert f"and 2 more: all are listed in {run / 'label_problems.csv'}" in out
    with open(run / "label_problems.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["line"]) for r in rows] == lines
    assert all(r["problem"] and str(labels) not in r["problem"] for r in rows)
    assert rows[0]["path"] == str(labels.parent / "photos" / "bad0.jpg")
    ckpt = load_checkpoint(run / "best.pt", expect="stage1")
    assert [c["column"] for c in ckpt.dataset["score_columns"]] == COUNTS


def test_preprocess_records_the_column_mapping_and_shows_the_bad_rows_once_located(labels, tmp_path):
    out = tmp_path / "shards"
    result = invoke(preprocess_args(labels, out, "--max-failure-rate", 0.5))    # 7 of 64 rows are bad
    assert result.exit_code == 0, result.output
    text = result.output
    assert "votes per score bucket from columns c1 -> 1" in text and "ignored columns: comment" in text
    assert "validation split has only 3 image(s)" in text and "--val-size" in text
    assert "label rows unusable: 7; the first 5:" in text and "and 2 more: all are in" in text
    assert f"{labels}:{bad_lines()[0]}: count column 'c1' is 'x'" in text

    expected = [{"column": f"c{k}", "bucket": k, "score": float(k)} for k in range(1, 11)]
    manifest = read_manifest(out)
    assert manifest.complete and manifest.run.score_columns == expected
    assert json.loads((out / "manifest.json").read_text())["score_columns"] == expected
    for parquet in sorted((out / "meta").glob("*.parquet")):
        metadata = pq.read_schema(parquet).metadata
        assert json.loads(metadata[SCORE_COLUMNS_KEY.encode()]) == expected, parquet

    table = pq.read_table(out / "meta").to_pandas()
    bad = table[table["status"] != "ok"].sort_values("id")
    assert len(bad) == len(BAD_ROWS)
    for error in bad["error"]:
        assert error.count(str(labels)) == 1 and error.count("line") == 1, error
    assert set(bad["path"]) == {str(labels.parent / "photos" / f"bad{k}.jpg") for k in range(len(BAD_ROWS))}


def test_manifests_without_score_columns_still_read(tmp_path, labels):
    out = tmp_path / "shards"
    assert invoke(preprocess_args(labels, out, "--split", "val")).exit_code == 0     # bad rows: no split
    data = json.loads((out / "manifest.json").read_text())
    del data["score_columns"]                                   # as gpf wrote it before the field
    (out / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(out).run.score_columns is None


# ----------------------------------------------------------------------------- item 2: paths

@pytest.fixture()
def paths_from_the_working_folder(photos, tmp_path, monkeypatch):
    """The CSV lives in labels/, its paths are written relative to the working folder."""
    monkeypatch.chdir(photos)
    return write_labels(tmp_path / "labels" / "cwd.csv", ["path", *COUNTS], good_rows(extra=()))


@pytest.mark.parametrize("command", ["stage1", "preprocess"])
def test_paths_relative_to_the_wrong_folder_are_one_line_naming_the_rule_and_image_root(
        paths_from_the_working_folder, photos, tmp_path, command):
    csv_path = paths_from_the_working_folder
    target = tmp_path / ("run" if command == "stage1" else "shards")
    args = stage1_args(csv_path, target, "--quiet") if command == "stage1" else preprocess_args(csv_path, target)
    message = refused(args, "none of the", "image files named by", str(csv_path.parent / "photos" / "p00.jpg"),
                      "relative to the CSV's folder", "--image-root", str(photos))
    assert "skipped_images.csv" not in message and "image_root" not in message
    assert not target.exists()                                   # nothing written, no manifest


def test_image_root_fixes_them(paths_from_the_working_folder, photos, tmp_path):
    out = tmp_path / "shards"
    result = invoke(preprocess_args(paths_from_the_working_folder, out, "--image-root", photos, "--split", "val"))
    assert result.exit_code == 0, result.output
    assert read_manifest(out).complete and read_manifest(out).samples("val") == 3


def test_a_run_that_wrote_nothing_has_no_complete_manifest_and_stage1_writes_the_file_it_names(
        photos, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for k in range(12):
        (broken / f"p{k:02d}.jpg").write_bytes(b"not a jpeg at all")
    csv_path = write_labels(tmp_path / "broken.csv", ["path", *COUNTS],
                            good_rows(prefix="broken/", n=12, extra=()))
    out = tmp_path / "shards"
    result = invoke(preprocess_args(csv_path, out, "--val-size", 2))
    assert result.exit_code == 1 and "no image could be written" in result.output
    assert "--overwrite" in result.output
    assert read_manifest(out).complete is False

    run = tmp_path / "run"
    message = refused(stage1_args(csv_path, run, "--val-size", 2, "--quiet"), "no usable training image",
                      "skipped_images.csv")
    assert str(run / "skipped_images.csv") in message
    with open(run / "skipped_images.csv") as f:
        assert len(list(csv.DictReader(f))) == 12 - round(0.1 * 12)


# ----------------------------------------------------------------------------- item 3: the folder options

def test_column_and_test_size_options_reach_both_commands(photos, tmp_path):
    header = ["ident", "photo_file", "bad", "ok", "good", "great"]
    rows = [[f"x{k}", f"photos/p{k:02d}.jpg", *map(str, votes(k)[:4])] for k in range(40)]
    csv_path = write_labels(photos / "own" / "own.csv", header, rows)
    options = ["--path-column", "photo_file", "--count-columns", "bad,ok,good,great", "--test-size", 0,
               "--image-root", photos, "--val-size", 8]
    out = tmp_path / "shards"
    result = invoke(preprocess_args(csv_path, out, *options))
    assert result.exit_code == 0, result.output
    assert "bad -> 1, ok -> 2, good -> 3, great -> 4" in result.output
    assert "ignored columns: ident" in result.output            # --path-column given: ident is no role
    manifest = read_manifest(out)
    assert manifest.run.split_spec["n_test"] == 0 and manifest.run.split_spec["n_val"] == 8
    assert manifest.run.config["dataset_options"]["count_columns"] == ["bad", "ok", "good", "great"]
    assert [c["column"] for c in manifest.run.score_columns] == ["bad", "ok", "good", "great"]

    run = tmp_path / "run"
    result = invoke(stage1_args(csv_path, run, *options))
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(run / "best.pt", expect="stage1")
    assert ckpt.dataset["options"]["path_column"] == "photo_file" and ckpt.dataset["options"]["test_size"] == 0
    assert ckpt.split_spec == manifest.run.split_spec

    ids = write_labels(photos / "ids.csv", ["photo_key", "c1", "c2"], [[f"p{k:02d}", "1", "2"] for k in range(4)])
    ds = load_folder(ids, id_column="photo_key", image_pattern="photos/{id}.jpg")
    assert ds.records[0].path == photos / "photos" / "p00.jpg"
    result = invoke(preprocess_args(ids, tmp_path / "ids", "--id-column", "photo_kee", "--split", "train"))
    assert result.exit_code == 1 and "'photo_kee' not in the header" in result.output
    assert "did you mean 'photo_key'" in result.output


@pytest.mark.parametrize("option, value", [("--path-column", "file"), ("--id-column", "id"),
                                           ("--count-columns", "a,b"), ("--test-size", "0.2")])
@pytest.mark.parametrize("kind", ["ava", "photonet"])
def test_folder_options_are_refused_for_the_fixed_formats(tmp_path, option, value, kind):
    result = invoke(["train", "stage1", kind, tmp_path, "--backbone", "tiny", option, value])
    assert result.exit_code == 2 and f"{option} applies to folder (CSV) datasets only" in result.output
    # `gpf preprocess ava|photonet` does not offer them at all (nor lists them in --help)
    result = invoke(["preprocess", kind, tmp_path, "--out", tmp_path / "o", "--backbone", "tiny", option, value])
    assert result.exit_code == 2 and f"No such option '{option}'" in result.output
    assert option not in invoke(["preprocess", kind, "--help"]).output
    assert option in invoke(["preprocess", "folder", "--help"]).output


def test_count_columns_needs_two_names(labels, tmp_path):
    result = invoke(preprocess_args(labels, tmp_path / "o", "--count-columns", "c1"))
    assert result.exit_code == 2 and "--count-columns" in result.output and "at least two" in result.output


# ----------------------------------------------------------------------------- item 8: delimiters

@pytest.mark.parametrize("delimiter, name", [(";", "semicolons"), ("\t", "tabs")])
def test_a_semicolon_or_tab_separated_csv_is_read(photos, tmp_path, delimiter, name):
    csv_path = write_labels(tmp_path / "semi.csv", ["path", *COUNTS],
                            good_rows(prefix=f"{photos}/photos/", extra=()), delimiter=delimiter)
    out = tmp_path / "shards"
    result = invoke(preprocess_args(csv_path, out, "--split", "val"))
    assert result.exit_code == 0, result.output
    assert f"semi.csv (fields separated by {name}): votes per score bucket from columns c1 -> 1" in result.output
    assert read_manifest(out).samples("val") == 3


def test_a_header_that_cannot_be_read_is_shown_as_read(photos, tmp_path):
    csv_path = write_labels(tmp_path / "spaces.csv", ["path", *COUNTS],
                            good_rows(prefix=f"{photos}/photos/", n=3, extra=()), delimiter=" ")
    refused(stage1_args(csv_path, tmp_path / "run", "--quiet"), "no vote count columns",
            "read as 1 column(s) separated by commas", "'path c1 c2", "semicolons, tabs")


def test_parquet_metadata_is_written_in_one_byte_order(tmp_path):
    from gpf.shards.writer import write_shard

    rows = [{"id": "a", "status": "missing", "error": "l.csv line 2: image file a.jpg not found"}]
    write_shard(tmp_path / "x", "train", 0, [], rows, metadata={"b": "2", SCORE_COLUMNS_KEY: "[]"})
    write_shard(tmp_path / "y", "train", 0, [], rows, metadata={SCORE_COLUMNS_KEY: "[]", "b": "2"})
    x, y = (tmp_path / d / "meta" / "train-000000.parquet" for d in "xy")
    assert x.read_bytes() == y.read_bytes()
    assert pq.read_schema(x).metadata[SCORE_COLUMNS_KEY.encode()] == b"[]"


# ----------------------------------------------------------------------------- stage 1 and preprocess agree on the scale

def test_preprocess_refuses_another_score_scale_than_the_stage1_model_learned(photos, tmp_path):
    csv_path = write_labels(photos / "scale.csv", ["path", *COUNTS], good_rows(extra=()))
    run = tmp_path / "run"
    reversed_columns = ",".join(reversed(COUNTS))
    assert invoke(stage1_args(csv_path, run, "--count-columns", reversed_columns)).exit_code == 0
    base = ["preprocess", "folder", csv_path, "--stage1", run, "--view-size", 32, "--workers", 1,
            "--batch-size", 8, "--device", "cpu", "--quiet"]
    message = refused([*base, "--out", tmp_path / "a"], "score scale differs", "score columns: c10,c9",
                      "--count-columns")
    assert "-> c1,c2" in message and not (tmp_path / "a" / "manifest.json").exists()
    refused([*base, "--out", tmp_path / "b", "--count-columns", reversed_columns, "--threshold", 7],
            "threshold: 5.5 -> 7")
    assert invoke([*base, "--out", tmp_path / "c", "--count-columns", reversed_columns]).exit_code == 0
