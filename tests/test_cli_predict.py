"""`gpf predict` (cli/predict.py) as a new user meets it (issue 14, item 11), run through the CLI.

Unique ids (the path relative to the input given), the `random` variant still
seeded by the dataset id, a missing file's advice about the path (not labels),
and the progress bar on a terminal that never ends up among the table's rows.
The data is the shared session fixture of tests/helpers/evaluation.py.
"""
from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from helpers.cli import invoke
from helpers.evaluation import TEST_IDS, build_eval_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_eval_data(tmp_path_factory)


def _image(data, image_id: str) -> Path:
    return data["ava"] / "images" / f"{image_id}.jpg"


def _json_lines(run) -> list[dict]:
    return [json.loads(line) for line in run.stdout.splitlines()]


# ----------------------------------------------------------------------------- ids

def test_unique_ids_keep_the_first_and_number_the_rest():
    from gpf.pipeline.scoring import unique_ids

    assert unique_ids(["a", "b", "a", "a"]) == ["a", "b", "a#2", "a#3"]
    # a suffix never takes an id that a photo of the input has already
    assert unique_ids(["a", "a", "a#2"]) == ["a", "a#3", "a#2"]
    assert unique_ids([]) == []


@pytest.fixture
def same_names(data, tmp_path):
    """The user's folder: a/photo.jpg, a/photo.png and b/photo.jpg, three different photos."""
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    shutil.copy(_image(data, TEST_IDS[0]), root / "a" / "photo.jpg")
    Image.open(_image(data, TEST_IDS[1])).save(root / "a" / "photo.png")
    shutil.copy(_image(data, TEST_IDS[2]), root / "b" / "photo.jpg")
    return root


def test_predict_ids_are_paths_relative_to_the_input_and_unique(data, same_names, tmp_path):
    out = tmp_path / "scores.parquet"
    run = invoke(["predict", "--checkpoint", data["gpf"], same_names, same_names / "a" / "photo.jpg",
                  same_names / "b", "--json", "--parquet", out, "--device", "cpu", "--quiet"])
    assert run.exit_code == 0, run.output
    rows = _json_lines(run)
    # the folder: ids relative to it, extension kept; a/photo.jpg and b/ given again: each file scored once
    assert [r["id"] for r in rows] == ["a/photo.jpg", "a/photo.png", "b/photo.jpg"]
    assert [r["path"] for r in rows] == [str(same_names / p) for p in ("a/photo.jpg", "a/photo.png", "b/photo.jpg")]
    means = {r["id"]: r["mean"] for r in rows}
    assert len({round(means[i], 9) for i in ("a/photo.jpg", "a/photo.png", "b/photo.jpg")}) == 3
    files = invoke(["predict", "--checkpoint", data["gpf"], same_names / "a" / "photo.jpg",
                    same_names / "b" / "photo.jpg", "--json", "--device", "cpu", "--quiet"])
    # two different files named directly with the same name: file names, told apart in input order
    assert [r["id"] for r in _json_lines(files)] == ["photo.jpg", "photo.jpg#2"]
    by_id = {r["id"]: r["mean"] for r in _json_lines(files)}
    assert by_id["photo.jpg"] == pytest.approx(means["a/photo.jpg"])        # the same file, the same score
    assert by_id["photo.jpg#2"] == pytest.approx(means["b/photo.jpg"])
    table = pd.read_parquet(out)
    assert table["id"].tolist() == [r["id"] for r in rows] and table["id"].is_unique

    again = invoke(["predict", "--checkpoint", data["gpf"], same_names, same_names / "a" / "photo.jpg",
                    same_names / "b", "--json", "--device", "cpu", "--quiet"])
    assert [r["id"] for r in _json_lines(again)] == [r["id"] for r in rows]   # deterministic


def test_predict_ids_use_posix_separators_and_no_folder_prefix(data, tmp_path, monkeypatch):
    nested = tmp_path / "in" / "x" / "y"
    nested.mkdir(parents=True)
    shutil.copy(_image(data, TEST_IDS[0]), nested / "p.JPG")
    monkeypatch.chdir(tmp_path)          # a relative folder argument, as typed
    run = invoke(["predict", "--checkpoint", data["gpf"], "in", "--json", "--device", "cpu", "--quiet"])
    assert [r["id"] for r in _json_lines(run)] == ["x/y/p.JPG"]
    assert _json_lines(run)[0]["path"] == os.path.join("in", "x", "y", "p.JPG")


def test_random_variant_from_the_cli_gets_the_crops_its_shard_stores(data, tmp_path):
    """The ids are relative paths now, but the crops are still seeded by the dataset id (the file stem)."""
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.pipeline.scoring import NamedImage, Scorer

    folder = tmp_path / "shoot"
    ids = TEST_IDS[:4]
    for k, image_id in enumerate(ids):
        (folder / f"day{k % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(_image(data, image_id), folder / f"day{k % 2}" / f"{image_id}.jpg")
    run = invoke(["predict", "--checkpoint", data["random"], folder, "--random-crops", "2", "--json",
                  "--device", "cpu", "--quiet"])
    assert run.exit_code == 0, run.output
    by_stem = {Path(r["id"]).stem: r for r in _json_lines(run)}
    assert {r["id"] for r in by_stem.values()} == {f"day{k % 2}/{i}.jpg" for k, i in enumerate(ids)}

    evaluation = evaluate_checkpoint(data["random"], data["shards"], workers=0, device="cpu")
    from_shards = dict(zip(evaluation.ids, evaluation.pred_mean))
    scorer = Scorer.from_checkpoint(data["random"], device="cpu", random_crops=2)
    by_path = {r.id: r for r in scorer.score_many([_image(data, i) for i in ids])}
    for image_id in ids:
        assert by_stem[image_id]["mean"] == pytest.approx(from_shards[image_id], abs=0.05)   # JPEG round trip
        assert by_stem[image_id]["mean"] == pytest.approx(by_path[image_id].mean, abs=1e-6)  # the same crops
    # the Python API: a NamedImage is reported under its id, its crops still keyed by the file's stem
    named = next(scorer.score_many([NamedImage("renamed/photo.jpg", _image(data, ids[0]))]))
    assert named.id == "renamed/photo.jpg" and named.mean == pytest.approx(by_path[ids[0]].mean, abs=1e-6)
    given = scorer.score(_image(data, ids[0]), image_id="other")
    assert given.id == "other" and given.mean == pytest.approx(by_path[ids[0]].mean, abs=1e-6)


# ----------------------------------------------------------------------------- messages

def test_missing_file_says_check_the_path_not_the_labels(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = invoke(["predict", "--checkpoint", data["gpf"], "holiday/gone.jpg", _image(data, TEST_IDS[0]),
                  "--device", "cpu", "--quiet"])
    assert run.exit_code == 0, run.output
    skipped = [line for line in run.stderr.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1, run.stderr
    line = skipped[0]
    assert "holiday/gone.jpg" in line and "check the path" in line
    assert str(tmp_path / "holiday" / "gone.jpg") in line                   # where it looked
    assert "label" not in line and "image root" not in line and "re-download" not in line
    assert "scored 1 of 2 images (missing 1)" in run.stderr

    nothing = invoke(["predict", "--checkpoint", data["gpf"], tmp_path / "gone.jpg", "--device", "cpu",
                      "--quiet"])
    assert nothing.exit_code == 1
    assert nothing.stderr.splitlines()[-1] == "Error: no image could be scored"   # as click words its errors
    assert str(tmp_path / "gone.jpg") in nothing.stderr and "label" not in nothing.stderr


def test_dataset_advice_for_a_missing_image_is_unchanged():
    """The scoring advice replaces the dataset's only for photos given to `gpf predict`."""
    from gpf.pipeline.images import STATUS_ADVICE, ImageError
    from gpf.pipeline.scoring import scoring_error_text

    error = ImageError("/data/x.jpg", "missing", "no such file")
    assert STATUS_ADVICE["missing"] in str(error)
    assert scoring_error_text(error) == str(error).replace(STATUS_ADVICE["missing"], "check the path")
    truncated = ImageError("/data/x.jpg", "truncated", "cut short")
    assert scoring_error_text(truncated) == str(truncated)


# ----------------------------------------------------------------------------- a terminal

def _screen(raw: str) -> list[str]:
    """What a terminal shows for ``raw``: \\r returns to column 0, ESC[K erases to the end of the line."""
    lines: list[list[str]] = [[]]
    col = 0
    i = 0
    while i < len(raw):
        char = raw[i]
        if char == "\x1b":
            match = re.match(r"\x1b\[[0-9;?]*[A-Za-z]", raw[i:])
            if match:
                if match.group().endswith("K"):
                    del lines[-1][col:]
                i += len(match.group())
                continue
        if char == "\r":
            col = 0
        elif char == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            if col < len(line):
                line[col] = char
            else:
                line.append(char)
            col += 1
        i += 1
    return ["".join(line).rstrip() for line in lines if "".join(line).strip()]


def _run_on_a_terminal(args: list, timeout: float = 120) -> tuple[int, str]:
    """Run ``python -m gpf.cli ARGS`` with stdout and stderr on one pseudo-terminal, as in a shell."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 220, 0, 0))
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "220", "LINES": "40"}
    proc = subprocess.Popen([sys.executable, "-m", "gpf.cli", *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:           # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_never_lands_among_the_rows(data, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for image_id in TEST_IDS[:7]:
        shutil.copy(_image(data, image_id), folder / f"{image_id}.jpg")
    code, raw = _run_on_a_terminal(["predict", "--checkpoint", data["gpf"], folder, tmp_path / "gone.jpg",
                                    "--device", "cpu", "--batch-size", "2", "--workers", "1"])
    screen = _screen(raw)
    assert code == 0, "\n".join(screen)
    assert screen[0].split() == ["mean", "std", "class", "box", "x0,y0,x1,y1", "image"], screen
    bars = [line for line in screen if "predict:" in line]
    rows = [line for line in screen if ".jpg" in line and not line.startswith("skipped:")]
    assert len(rows) == 8, screen
    # each row whole on its own line; the bar only on its own line, once, at 100% under the table
    assert all("predict:" not in row and "%|" not in row for row in rows), screen
    assert len(bars) == 1 and bars[0].startswith("predict: 100%") and "8/8" in bars[0], screen
    assert screen.index(bars[0]) > max(screen.index(row) for row in rows)
    assert screen[-1] == "scored 7 of 8 images (missing 1)", screen
    assert sum(line.startswith("skipped: ") and "gone.jpg" in line for line in screen) == 1, screen
