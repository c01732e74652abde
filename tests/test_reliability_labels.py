"""Bad label rows through `gpf preprocess`: lenient report rows in the Parquet, or one clear error.

tests/test_sources.py checks the parsers; here the whole command runs and the
check is what the user gets: a Parquet row per bad line (status, error naming
file and line), tar keys that are safe whatever the id, the original id kept,
and file-level problems as one line and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.ava import ava_line, make_ava, photo_like
from helpers.cli import invoke
from gpf.shards.layout import is_safe_key

VIEW = 64
GOOD = [3, 4, 9, 12, 6, 2, 1, 0, 0, 1]



def preprocess(kind: str, root, out, *extra):
    return invoke(["preprocess", kind, root, "--out", out, "--backbone", "tiny", "--weights", "none",
                   "--view-size", VIEW, "--samples-per-shard", 50, "--max-failure-rate", 1, "--quiet",
                   *extra])


def _write_image(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo_like(48, 40, np.random.default_rng(seed))).save(path, "JPEG", quality=90)


# Bad AVA lines: id -> (line text without the leading index, expected status, words the error must hold)
BAD_LINES = {
    "few": ("few " + " ".join(map(str, GOOD)) + " 0 0", "bad_label", ["expected 15", "found 14"]),
    "many": ("many " + " ".join(map(str, GOOD)) + " 0 0 1 99", "bad_label", ["expected 15", "found 16"]),
    "fraction": ("fraction 1 2.5 3 4 5 6 7 8 9 10 0 0 1", "bad_label", ["score 2", "'2.5'", "whole number"]),
    "word": ("word 1 2 3 x 5 6 7 8 9 10 0 0 1", "bad_label", ["score 4", "'x'"]),
    "negative": ("negative 1 2 3 4 -5 6 7 8 9 10 0 0 1", "bad_label", ["score 5", "-5", ">= 0"]),
    "zeros": ("zeros 0 0 0 0 0 0 0 0 0 0 0 0 1", "bad_label", ["all 10 vote counts are 0"]),
    "sub/evil": ("sub/evil " + " ".join(map(str, GOOD)) + " 0 0 1", "bad_label", ["path separator"]),
    "..": (".. " + " ".join(map(str, GOOD)) + " 0 0 1", "bad_label", ["path separator"]),
}
# Ids that are fine AVA ids but cannot be tar keys as they are.
ODD_IDS = ["dotted.name", "a.b.c", "-leading-dash", "ünïcødé", "x" * 80]


@pytest.fixture(scope="module")
def ava(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    ids = make_ava(root, n=6)
    lines = (root / "AVA.txt").read_text().splitlines()
    line_of = {}
    for image_id, (text, _, _) in BAD_LINES.items():
        lines.append(f"{len(lines) + 1} {text}")
        line_of[image_id] = len(lines)
    for k, image_id in enumerate(ODD_IDS):
        _write_image(root / "images" / f"{image_id}.jpg", seed=k)
        lines.append(ava_line(len(lines) + 1, image_id, GOOD))
    # a duplicate of an ordinary id with other votes: the first row wins, the second is reported
    lines.append(ava_line(len(lines) + 1, ids[1], [9] * 10))
    line_of["duplicate"] = len(lines)
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    # the test list names ids AVA.txt does not have
    test_list = root / "aesthetics_image_lists" / "generic_test.jpgl"
    test_list.write_text(test_list.read_text() + "404404\n404405\n")
    return {"root": root, "ids": ids, "line_of": line_of}


@pytest.fixture(scope="module")
def result(ava, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels_out")
    run = preprocess("ava", ava["root"], out)
    assert run.exit_code == 0, run.output
    return {"out": out, "output": run.output, "rows": pd.read_parquet(out / "meta")}


def test_each_bad_ava_line_is_a_parquet_row_naming_file_line_and_problem(ava, result):
    rows = result["rows"].set_index("id")
    label = str(ava["root"] / "AVA.txt")
    for image_id, (_, status, words) in BAD_LINES.items():
        row = rows.loc[image_id]
        assert row["status"] == status, image_id
        assert f"{label} line {ava['line_of'][image_id]}" in row["error"], row["error"]
        for word in words:
            assert word in row["error"], (image_id, word, row["error"])
        assert is_safe_key(row["key"]) and "/" not in row["key"]
    assert "bad_label 8" in result["output"]


def test_duplicate_id_keeps_the_first_row_and_reports_the_second(ava, result):
    rows = result["rows"]
    first, dup = ava["ids"][1], f"{ava['ids'][1]}@line{ava['line_of']['duplicate']}"
    ok = rows[rows["id"] == first]
    assert len(ok) == 1 and ok["status"].iloc[0] == "ok" and list(ok["votes"].iloc[0]) != [9] * 10
    reported = rows[rows["id"] == dup]
    assert len(reported) == 1 and reported["status"].iloc[0] == "duplicate"
    assert "already appeared on line" in reported["error"].iloc[0]
    assert rows["id"].is_unique and "duplicate 1" in result["output"]


def test_ids_that_cannot_be_tar_keys_get_safe_keys_and_keep_the_original(ava, result):
    rows = result["rows"].set_index("id")
    in_tar = {}
    for path in result["out"].glob("*.tar"):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                assert "/" not in member.name
                if ext == "json":
                    in_tar[key] = json.loads(tar.extractfile(member).read())["id"]
    keys = [rows.loc[i, "key"] for i in ODD_IDS]
    assert len(set(keys)) == len(ODD_IDS)
    for image_id, key in zip(ODD_IDS, keys):
        assert rows.loc[image_id, "status"] == "ok", rows.loc[image_id, "error"]
        assert is_safe_key(key) and key != image_id
        assert in_tar[key] == image_id                 # the json member keeps the id as written
    assert result["rows"]["key"].is_unique


def test_test_list_ids_absent_from_ava_txt_are_reported_not_invented(ava, result):
    rows = result["rows"]
    assert not rows["id"].isin(["404404", "404405"]).any()
    assert "2 of the" in result["output"] and "generic_test.jpgl" in result["output"]
    assert set(rows.loc[rows["split"] == "test", "id"]) <= set(ava["ids"])


@pytest.mark.parametrize("content, words", [
    ("", ["AVA.txt is empty"]),
    ("\n\n   \n", ["AVA.txt is empty"]),
    ("1 bad 1 2 3\n2 worse x\n", ["none of its 2 rows is usable", "line 1: expected 15"]),
])
def test_unusable_ava_txt_is_one_clear_error(tmp_path, content, words):
    (tmp_path / "AVA.txt").write_text(content)
    run = preprocess("ava", tmp_path, tmp_path / "out")
    assert run.exit_code == 1
    message = run.output.strip()
    assert len(message.splitlines()) == 1 and str(tmp_path / "AVA.txt") in message, message
    for word in words:
        assert word.lower() in message.lower(), message


@pytest.mark.slow
def test_empty_ava_txt_real_process_exit_code(tmp_path):
    (tmp_path / "AVA.txt").write_text("")
    run = subprocess.run([sys.executable, "-m", "gpf.cli", "preprocess", "ava", str(tmp_path), "--out",
                          str(tmp_path / "out"), "--backbone", "tiny", "--weights", "none"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "AVA.txt is empty" in run.stderr


# ----------------------------------------------------------------------------- CSV folders

def _csv_folder(root, header: str, rows: list[str]) -> None:
    for k in range(4):
        _write_image(root / f"p{k}.jpg", seed=k)
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")


def test_csv_without_a_count_column_is_an_error_naming_file_line_and_column(tmp_path):
    _csv_folder(tmp_path, "image,c1,c2,c4", [f"p{k}.jpg,1,2,3" for k in range(4)])
    run = preprocess("folder", tmp_path / "labels.csv", tmp_path / "out")
    assert run.exit_code == 1
    message = run.output.strip()
    assert len(message.splitlines()) == 1
    assert f"{tmp_path / 'labels.csv'} line 1" in message and "c3" in message and "missing" in message


def test_csv_rows_missing_a_count_cell_or_with_a_bad_count_are_report_rows(tmp_path):
    _csv_folder(tmp_path, "image,c1,c2,c3", ["p0.jpg,1,2,3", "p1.jpg,4,5", "p2.jpg,1,two,3", "p3.jpg,3,2,1"])
    run = preprocess("folder", tmp_path / "labels.csv", tmp_path / "out")
    assert run.exit_code == 0, run.output
    rows = pd.read_parquet(tmp_path / "out" / "meta").set_index("id")
    assert set(rows.loc[["p0.jpg", "p3.jpg"], "status"]) == {"ok"}
    label = str(tmp_path / "labels.csv")
    short, word = rows.loc["p1.jpg"], rows.loc["p2.jpg"]
    assert short["status"] == "bad_label" and f"{label} line 3" in short["error"]
    assert "3 fields but the header has 4" in short["error"]
    assert word["status"] == "bad_label" and f"{label} line 4" in word["error"]
    assert "'c2'" in word["error"] and "'two'" in word["error"]
