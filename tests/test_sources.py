"""Tests for gpf.pipeline.sources: AVA, Photo.net and folder+CSV readers.

Every fixture is written here, into tmp_path, in the verbatim file formats
(AVA.txt: 15 space-separated columns; photonet_dataset.txt: 12 columns, CRLF;
.jpgl: one id per line). Expected values are written out by hand.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from gpf.pipeline.sources import (
    AVA_SCORES, PHOTONET_SCORES, Dataset, LabelError, Problem, Record, check_images_resolve, load_ava,
    load_folder, load_photonet, open_dataset)

# ----------------------------------------------------------------------- fixtures

TAGS_TXT = "1 Abstract\n21 Black and White\n15 Nature\n19 Animals\n"
CHALLENGES_TXT = "1396 100_Meters\n616 Silhouettes\n"


def ava_line(index: int, image_id: int, votes, tags=(0, 0), challenge=1396) -> str:
    return " ".join(map(str, (index, image_id, *votes, *tags, challenge)))


def synthetic_votes(k: int) -> tuple[int, ...]:
    """Ten non-negative counts, never all zero, different per k."""
    return tuple((k * (b + 3)) % 17 + (b == 4) for b in range(10))


def write_ava(folder: Path, lines: list[str], *, test_ids=None, categories=None,
              tags: str | None = TAGS_TXT) -> Path:
    """An AVA release layout: AVA.txt, tags.txt, challenges.txt, image lists."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "AVA.txt").write_text("".join(line + "\n" for line in lines))
    if tags is not None:
        (folder / "tags.txt").write_text(tags)
    (folder / "challenges.txt").write_text(CHALLENGES_TXT)
    lists = folder / "aesthetics_image_lists"
    if test_ids is not None or categories:
        lists.mkdir(exist_ok=True)
    if test_ids is not None:
        (lists / "generic_test.jpgl").write_text("".join(f"{i}\n" for i in test_ids))
    for name, ids in (categories or {}).items():
        (lists / f"{name}_test.jpgl").write_text("".join(f"{i}\n" for i in ids))
    return folder


def many_ava_lines(n: int, first_id: int = 1000) -> list[str]:
    return [ava_line(k + 1, first_id + k, synthetic_votes(k)) for k in range(n)]


def split_of(dataset: Dataset) -> dict[str, str]:
    return {r.image_id: r.split for r in dataset.records}


# ---------------------------------------------------------------------------- AVA

def test_ava_parses_verbatim_lines_with_tags_challenge_and_category(tmp_path):
    lines = [
        "1 953619 0 1 5 17 38 36 15 6 5 1 1 21 1396",
        "2 953958 10 7 15 33 30 13 6 4 3 5 15 0 1396",
        "3 954184 0 0 4 8 41 56 10 3 4 2 0 0 616",
    ]
    root = write_ava(tmp_path, lines, test_ids=["954184"], categories={"animal": ["954184"]})
    ds = load_ava(root)

    assert [r.image_id for r in ds.records] == ["953619", "953958", "954184"]
    first, second, third = ds.records
    assert first.votes == (0, 1, 5, 17, 38, 36, 15, 6, 5, 1)
    assert first.tags == ("Abstract", "Black and White")
    assert second.tags == ("Nature",)          # tag id 0 means no tag
    assert third.tags == ()
    assert (first.challenge, third.challenge) == (1396, 616)
    assert [r.line for r in ds.records] == [1, 2, 3]
    assert first.path == tmp_path / "images" / "953619.jpg"
    assert third.split == "test" and third.category == "animal"
    assert first.category is None
    assert ds.categories["animal"] == frozenset({"954184"})
    assert ds.scores == AVA_SCORES == tuple(float(s) for s in range(1, 11))
    assert ds.threshold == 5.0
    assert ds.name == "ava" and ds.problems == []


def test_ava_test_split_is_list_intersect_rows_and_absent_ids_are_counted(tmp_path):
    lines = many_ava_lines(12)  # ids 1000..1011
    listed = ["1001", "1005", "1011", "5", "77777", "1005"]  # 2 absent ids, 1 repeated
    ds = load_ava(write_ava(tmp_path, lines, test_ids=listed), val_size=0)

    assert {r.image_id for r in ds.split("test")} == {"1001", "1005", "1011"}
    assert {r.image_id for r in ds.split("train")} == (
        {str(1000 + k) for k in range(12)} - {"1001", "1005", "1011"})
    assert ds.split("val") == []
    assert ds.report["test_list_ids"] == 5
    assert ds.report["test_list_absent"] == 2
    assert any("2 of the 5 ids" in note for note in ds.notes)
    assert ds.problems == []


def test_ava_val_split_is_deterministic_sized_and_independent_of_line_order(tmp_path):
    lines = many_ava_lines(60)
    test_ids = [str(1000 + k) for k in range(0, 60, 6)]  # 10 test ids
    shuffled = lines[:]
    random.Random(1).shuffle(shuffled)
    a = load_ava(write_ava(tmp_path / "a", lines, test_ids=test_ids), val_size=7, seed=3)
    b = load_ava(write_ava(tmp_path / "b", shuffled, test_ids=test_ids), val_size=7, seed=3)

    assert split_of(a) == split_of(b)
    val = {r.image_id for r in a.split("val")}
    assert len(val) == 7 and not val & set(test_ids)
    assert a.split_spec == b.split_spec
    # A fraction is of the 50 non-test rows; another seed picks another sample.
    assert len(load_ava(tmp_path / "a", val_size=0.2).split("val")) == 10
    assert len(load_ava(tmp_path / "a", val_size=0.118).split("val")) == 6  # 5.9 rounded
    other_seed = {r.image_id for r in load_ava(tmp_path / "a", val_size=7, seed=4).split("val")}
    assert other_seed != val


def test_ava_split_spec_is_plain_and_tracks_how_splits_were_made(tmp_path):
    root = write_ava(tmp_path, many_ava_lines(30), test_ids=["1003", "1004"])
    spec = load_ava(root, val_size=5).split_spec
    assert json.loads(json.dumps(spec)) == spec
    assert (spec["n_train"], spec["n_val"], spec["n_test"]) == (23, 5, 2)
    assert spec["val_size"] == 5 and spec["seed"] == 0 and spec["test_list"] == "generic_test.jpgl"
    assert load_ava(root, val_size=5).split_spec == spec
    assert load_ava(root, val_size=5, seed=1).split_spec != spec
    root_other = write_ava(tmp_path / "o", many_ava_lines(30), test_ids=["1003", "1005"])
    other = load_ava(root_other, val_size=5).split_spec
    assert other["test_ids_sha256"] != spec["test_ids_sha256"]


def test_ava_dataset_subfolder_is_accepted_with_images_at_either_level(tmp_path):
    write_ava(tmp_path / "AVA_dataset", many_ava_lines(3), test_ids=["1002"])
    (tmp_path / "images").mkdir()  # images beside AVA_dataset/, as some mirrors ship them
    ds = load_ava(tmp_path)
    assert len(ds.records) == 3 and ds.split("test")[0].image_id == "1002"
    assert ds.records[0].path == tmp_path / "images" / "1000.jpg"
    (tmp_path / "AVA_dataset" / "images").mkdir()
    assert load_ava(tmp_path).records[0].path == tmp_path / "AVA_dataset" / "images" / "1000.jpg"


def test_ava_label_file_can_be_given_directly_under_any_name(tmp_path):
    write_ava(tmp_path, [], test_ids=["1001"])
    (tmp_path / "AVA.txt").unlink()
    (tmp_path / "AVA_part.txt").write_text("\n".join(many_ava_lines(3)))  # no final newline
    ds = load_ava(tmp_path / "AVA_part.txt", val_size=0)
    assert len(ds.records) == 3 and [r.image_id for r in ds.split("test")] == ["1001"]
    assert ds.root == tmp_path and ds.records[0].path == tmp_path / "images" / "1000.jpg"


def test_ava_missing_label_file_names_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_ava(tmp_path)
    assert str(tmp_path / "AVA.txt") in str(err.value)
    assert str(tmp_path / "AVA_dataset" / "AVA.txt") in str(err.value)


def test_ava_missing_optional_files_give_notes_not_errors(tmp_path):
    root = write_ava(tmp_path, [ava_line(1, 7, synthetic_votes(1), tags=(21, 99))], tags=None)
    ds = load_ava(root, val_size=0)
    assert ds.records[0].tags == ("21", "99")
    assert ds.records[0].split == "train" and ds.split("test") == []
    assert ds.split_spec["kind"] == "ava-no-test-list"
    notes = " ".join(ds.notes)
    assert "tags.txt" in notes and "generic_test.jpgl" in notes and "animal_test.jpgl" in notes


def test_ava_unknown_tag_id_is_kept_as_number_and_reported(tmp_path):
    root = write_ava(tmp_path, [ava_line(1, 7, synthetic_votes(1), tags=(1, 42))])
    ds = load_ava(root, val_size=0)
    assert ds.records[0].tags == ("Abstract", "42")
    assert ds.report["unknown_tag_ids"] == [42]


def test_ava_explicit_test_list_must_exist(tmp_path):
    root = write_ava(tmp_path, many_ava_lines(3))
    with pytest.raises(FileNotFoundError, match="nope.jpgl"):
        load_ava(root, test_list=tmp_path / "nope.jpgl")
    (tmp_path / "mine.jpgl").write_text("1001\n")
    assert [r.image_id for r in load_ava(root, test_list=tmp_path / "mine.jpgl").split("test")] \
        == ["1001"]


GOOD = ava_line(1, 500, synthetic_votes(1))
BAD_AVA_ROWS = {
    "too_few_columns": ("2 501 1 2 3 4 5 6 7 8 9 0 0 1396", "found 14", "bad_label"),
    "too_many_columns": ("2 501 1 2 3 4 5 6 7 8 9 10 0 0 1396 7", "found 16", "bad_label"),
    "non_integer_count": ("2 501 1 2 3 x4 5 6 7 8 9 10 0 0 1396", "score 4 is 'x4'", "bad_label"),
    "float_count": ("2 501 1 2 3 4.0 5 6 7 8 9 10 0 0 1396", "score 4 is '4.0'", "bad_label"),
    "negative_count": ("2 501 1 2 3 4 5 6 7 -8 9 10 0 0 1396", "score 8 is -8", "bad_label"),
    "all_zero_counts": ("2 501 0 0 0 0 0 0 0 0 0 0 0 0 1396", "all 10 vote counts are 0",
                        "bad_label"),
    "bad_challenge": ("2 501 1 2 3 4 5 6 7 8 9 10 0 0 ch", "challenge id", "bad_label"),
    "path_in_id": ("2 ../501 1 2 3 4 5 6 7 8 9 10 0 0 1396", "path separator", "bad_label"),
    "duplicate_id": ("2 500 9 9 9 9 9 9 9 9 9 9 0 0 1396", "already appeared on line 1",
                     "duplicate"),
}


@pytest.mark.parametrize("kind", sorted(BAD_AVA_ROWS))
def test_ava_bad_row_strict_raises_with_file_and_line(tmp_path, kind):
    bad, expected, status = BAD_AVA_ROWS[kind]
    root = write_ava(tmp_path, [GOOD, ava_line(3, 502, synthetic_votes(2)), bad])
    with pytest.raises(LabelError) as err:
        load_ava(root, strict=True)
    message = str(err.value)
    assert str(tmp_path / "AVA.txt") in message and "line 3" in message
    assert expected in message
    assert (err.value.line, err.value.status) == (3, status)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("kind", sorted(BAD_AVA_ROWS))
def test_ava_bad_row_lenient_becomes_problem(tmp_path, kind):
    bad, expected, status = BAD_AVA_ROWS[kind]
    root = write_ava(tmp_path, [GOOD, ava_line(3, 502, synthetic_votes(2)), bad],
                     test_ids=["501"])
    ds = load_ava(root, val_size=0)
    assert [r.image_id for r in ds.records] == ["500", "502"]
    assert ds.records[0].votes == synthetic_votes(1)   # duplicate: the first row is kept
    (problem,) = ds.problems
    assert (problem.line, problem.status, problem.source) == (3, status, str(root / "AVA.txt"))
    assert expected in problem.error and "line 3" in problem.error
    assert ds.report["problems"] == {status: 1}
    if problem.image_id == "501":      # the bad row's id is on the test list
        assert problem.split == "test"


def test_ava_duplicate_message_names_both_lines(tmp_path):
    root = write_ava(tmp_path, [GOOD, "", ava_line(9, 500, synthetic_votes(5))])
    (problem,) = load_ava(root, val_size=0).problems
    assert "line 1" in problem.error and "line 3" in problem.error
    assert problem.image_id == "500" and problem.status == "duplicate"


@pytest.mark.parametrize("strict", [True, False])
def test_ava_empty_label_file_is_a_clear_error(tmp_path, strict):
    root = write_ava(tmp_path, ["", "  "])
    with pytest.raises(LabelError, match="empty: no rows to use"):
        load_ava(root, strict=strict)


def test_ava_file_with_only_bad_rows_says_nothing_is_usable(tmp_path):
    root = write_ava(tmp_path, ["1 2 3", "4 5 6"])
    with pytest.raises(LabelError, match="none of its 2 rows is usable"):
        load_ava(root)


def test_ava_missing_images_are_reported_when_checked(tmp_path):
    root = write_ava(tmp_path, many_ava_lines(4), test_ids=["1003"])
    (root / "images").mkdir()
    for image_id in ("1000", "1002"):
        (root / "images" / f"{image_id}.jpg").write_bytes(b"\xff\xd8")

    checked = load_ava(root, check_images=True, val_size=0)
    assert [r.image_id for r in checked.records] == ["1000", "1002"]
    missing = {p.image_id: p for p in checked.problems}
    assert set(missing) == {"1001", "1003"}
    assert missing["1003"].status == "missing" and missing["1003"].split == "test"
    assert str(root / "images" / "1003.jpg") in missing["1003"].error
    assert checked.report["problems"] == {"missing": 2}
    assert checked.split_spec == load_ava(root, val_size=0).split_spec  # splits never shift

    unchecked = load_ava(root, check_images=False, val_size=0)
    assert len(unchecked.records) == 4 and unchecked.problems == []


def test_ava_image_pattern_is_configurable(tmp_path):
    root = write_ava(tmp_path, many_ava_lines(1))
    assert load_ava(root, image_pattern="jpg/img_{id}.jpeg").records[0].path == \
        tmp_path / "jpg" / "img_1000.jpeg"
    assert load_ava(root, image_pattern="/data/{id}/{id}.jpg").records[0].path == \
        Path("/data/1000/1000.jpg")
    with pytest.raises(ValueError, match="must contain the id"):
        load_ava(root, image_pattern="images/{name}.jpg")


def test_threshold_can_be_overridden_within_the_scale(tmp_path):
    root = write_ava(tmp_path / "ava", many_ava_lines(2))
    assert load_ava(root).threshold == 5.0 and load_ava(root, threshold=5.5).threshold == 5.5
    path = write_photonet(tmp_path / "pn", many_photonet_lines(3))
    assert load_photonet(path, threshold=4).threshold == 4.0
    for bad in (0.5, 11, float("nan")):
        with pytest.raises(ValueError, match="outside the score range 1..10"):
            load_ava(root, threshold=bad)


def test_dataset_split_names(tmp_path):
    ds = load_ava(write_ava(tmp_path, many_ava_lines(5), test_ids=["1000"]), val_size=1)
    assert len(ds.split("all")) == 5
    assert sorted(len(ds.split(s)) for s in ("train", "val", "test")) == [1, 1, 3]
    with pytest.raises(ValueError) as err:
        ds.split("validation")
    for allowed in ("'train'", "'val'", "'test'", "'all'"):
        assert allowed in str(err.value)


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (99, ValueError), (1.5, ValueError),
                                        (True, TypeError), ("5", TypeError)])
def test_ava_val_size_must_be_a_count_or_fraction(tmp_path, bad, error):
    root = write_ava(tmp_path, many_ava_lines(5))
    with pytest.raises(error, match="val_size"):
        load_ava(root, val_size=bad)


# ---------------------------------------------------------------------- Photo.net

def photonet_line(index: int, photo_id: int, counts, n_ratings=None) -> str:
    n = sum(counts) if n_ratings is None else n_ratings
    return f"{index} {photo_id} {n} 5.17 0.583333333333339 {' '.join(map(str, counts))}"


def write_photonet(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "photonet_dataset.txt"
    path.write_bytes("".join(line + "\r\n" for line in lines).encode())  # CRLF, as distributed
    return path


def many_photonet_lines(n: int) -> list[str]:
    return [photonet_line(k + 1, 2000 + k, [k % 3, 1, 2, k % 5, 4, 1, k % 2]) for k in range(n)]


def test_photonet_reports_missing_distributions_and_count_mismatches(tmp_path):
    lines = [
        photonet_line(1, 1008958, [0, 0, 0, 4, 7, 7, 0]),
        "2 1021911 33 6.18 -1 -1 -1 -1 -1 -1 -1 -1",
        photonet_line(3, 1010164, [0, 0, 0, 1, 4, 15, 2], n_ratings=21),  # counts sum to 22
        "4 1024705 17 5 -1 -1 -1 -1 -1 -1 -1 -1",
        photonet_line(5, 1010893, [0, 0, 0, 0, 1, 11, 16]),
    ]
    path = write_photonet(tmp_path, lines)
    for strict in (False, True):   # -1 rows are a property of the data, not malformed rows
        ds = load_photonet(path, strict=strict)
        assert [r.image_id for r in ds.records] == ["1008958", "1010164", "1010893"]
        assert ds.records[1].votes == (0, 0, 0, 1, 4, 15, 2)
        assert [(p.image_id, p.line, p.status) for p in ds.problems] == [
            ("1021911", 2, "no_distribution"), ("1024705", 4, "no_distribution")]
        assert ds.report["no_distribution"] == 2
        assert ds.report["count_mismatch"] == 1
        assert "line 3" in ds.report["count_mismatch_examples"][0]
    assert ds.scores == PHOTONET_SCORES and len(ds.scores) == 7
    assert ds.threshold == 5.0
    assert ds.records[0].path == tmp_path / "images" / "1008958.jpg"
    assert load_photonet(tmp_path).split_spec == ds.split_spec   # folder or file


def test_photonet_small_file_scales_the_paper_split(tmp_path):
    # 172 usable rows = 1 % of the paper's 17,200: 150 train, 10 val, 12 test.
    ds = load_photonet(write_photonet(tmp_path, many_photonet_lines(172)))
    assert ds.report["splits"] == {"train": 150, "val": 10, "test": 12}
    assert any("scaled" in note for note in ds.notes)


def test_photonet_sizes_counts_fractions_and_limits(tmp_path):
    path = write_photonet(tmp_path, many_photonet_lines(40))
    assert load_photonet(path, train_size=30, val_size=4).report["splits"] == \
        {"train": 30, "val": 4, "test": 6}
    assert load_photonet(path, train_size=0.5, val_size=0.25).report["splits"] == \
        {"train": 20, "val": 10, "test": 10}
    with pytest.raises(ValueError, match="more than the 40 usable rows"):
        load_photonet(path, train_size=38, val_size=4)


def test_photonet_split_is_seeded_and_independent_of_line_order(tmp_path):
    lines = many_photonet_lines(50)
    shuffled = lines[:]
    random.Random(2).shuffle(shuffled)
    a = load_photonet(write_photonet(tmp_path / "a", lines), train_size=30, val_size=5, seed=9)
    b = load_photonet(write_photonet(tmp_path / "b", shuffled), train_size=30, val_size=5, seed=9)
    assert split_of(a) == split_of(b) and a.split_spec == b.split_spec
    c = load_photonet(tmp_path / "a", train_size=30, val_size=5, seed=10)
    assert split_of(c) != split_of(a)


BAD_PHOTONET_ROWS = {
    "too_few_columns": ("9 3001 12 4.5 0.8 0 0 1 5 4 3", "found 11", "bad_label"),
    "too_many_columns": ("9 3001 12 4.5 0.8 0 0 1 5 4 3 0 1", "found 13", "bad_label"),
    "non_integer_count": ("9 3001 12 4.5 0.8 0 0 one 5 4 3 0", "score 3 is 'one'", "bad_label"),
    "negative_count": ("9 3001 12 4.5 0.8 0 0 1 -5 4 3 0", "score 4 is -5", "bad_label"),
    "partly_minus_one": ("9 3001 12 4.5 0.8 -1 0 1 5 4 3 0", "score 1 is -1", "bad_label"),
    "all_zero_counts": ("9 3001 12 4.5 0.8 0 0 0 0 0 0 0", "all 7 vote counts are 0",
                        "bad_label"),
    "bad_n_ratings": ("9 3001 twelve 4.5 0.8 0 0 1 5 4 3 0", "n_ratings", "bad_label"),
    "duplicate_id": (photonet_line(9, 2000, [1, 1, 1, 1, 1, 1, 1]), "already appeared on line 1",
                     "duplicate"),
}


@pytest.mark.parametrize("kind", sorted(BAD_PHOTONET_ROWS))
def test_photonet_bad_rows_strict_and_lenient(tmp_path, kind):
    bad, expected, status = BAD_PHOTONET_ROWS[kind]
    path = write_photonet(tmp_path, many_photonet_lines(2) + [bad])
    with pytest.raises(LabelError) as err:
        load_photonet(path, strict=True, train_size=1, val_size=0)
    assert f"{path} line 3" in str(err.value) and expected in str(err.value)
    ds = load_photonet(path, train_size=1, val_size=0)
    assert len(ds.records) == 2
    (problem,) = ds.problems
    assert (problem.line, problem.status) == (3, status) and expected in problem.error


def test_photonet_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="photonet_dataset.txt"):
        load_photonet(tmp_path)


# -------------------------------------------------------------------- folder + CSV

def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_csv_infers_n_from_numbered_columns_with_midpoint_threshold(tmp_path):
    csv_path = write_csv(tmp_path / "labels.csv",
                         "path,c1,c2,c3,c4,c5,split,tags,category\n"
                         "a.jpg,1,2,3,4,5,train,sky|sea,outdoor\n"
                         "sub/b.png,0,0,1,0,0,val,,\n"
                         "/abs/c.jpg,5,0,0,0,1,test,portrait; bw,people\n")
    ds = load_folder(csv_path)
    assert ds.scores == (1.0, 2.0, 3.0, 4.0, 5.0) and ds.threshold == 3.0
    a, b, c = ds.records
    assert a.image_id == "a.jpg" and a.path == tmp_path / "a.jpg" and a.votes == (1, 2, 3, 4, 5)
    assert b.path == tmp_path / "sub" / "b.png" and c.path == Path("/abs/c.jpg")
    assert [r.split for r in ds.records] == ["train", "val", "test"]
    assert a.tags == ("sky", "sea") and c.tags == ("portrait", "bw") and b.tags == ()
    assert (a.category, b.category) == ("outdoor", None)
    assert ds.categories == {"outdoor": frozenset({"a.jpg"}), "people": frozenset({"/abs/c.jpg"})}
    assert [r.line for r in ds.records] == [2, 3, 4]
    assert ds.split_spec["kind"] == "csv-column" and ds.name == "folder"


@pytest.mark.parametrize("names", [["count_1", "count_2", "count_3"],
                                   ["votes1", "votes2", "votes3"], ["N1", "N2", "N3"]])
def test_csv_accepts_the_documented_numbered_forms(tmp_path, names):
    csv_path = write_csv(tmp_path / "l.csv", f"image_id,{','.join(names)}\n7,1,0,2\n")
    ds = load_folder(csv_path, test_size=0, val_size=0)
    assert ds.records[0].votes == (1, 0, 2) and ds.scores == (1.0, 2.0, 3.0)
    assert ds.records[0].path == tmp_path / "7.jpg"


def test_csv_score_named_columns_give_the_scores(tmp_path):
    csv_path = write_csv(tmp_path / "l.csv", "id,score_2,score_0,score_4\nx,1,2,3\n")
    ds = load_folder(csv_path, test_size=0, val_size=0)
    assert ds.scores == (0.0, 2.0, 4.0) and ds.threshold == 2.0
    assert ds.records[0].votes == (2, 1, 3)  # reordered to increasing score


def test_csv_explicit_scale_and_threshold(tmp_path):
    csv_path = write_csv(tmp_path / "l.csv", "file,bad,ok,good,great\nq.jpg,1,2,3,4\n")
    ds = load_folder(csv_path, count_columns=["bad", "ok", "good", "great"], n_buckets=4,
                     scores=[0, 2.5, 5, 7.5], threshold=6, image_root=tmp_path / "imgs",
                     test_size=0, val_size=0)
    assert ds.scores == (0.0, 2.5, 5.0, 7.5) and ds.threshold == 6.0
    assert ds.records[0].votes == (1, 2, 3, 4)
    assert ds.records[0].path == tmp_path / "imgs" / "q.jpg"
    with pytest.raises(ValueError, match="scores has 3 values"):
        load_folder(csv_path, count_columns=["bad", "ok", "good", "great"], scores=[1, 2, 3])


@pytest.mark.parametrize("header, options, expected", [
    ("path,c1,c2,c4", {}, "c3 missing"),
    ("path,c1,c2,c3", {"n_buckets": 4}, "n_buckets=4"),
    ("path,c1,c2,c3", {"count_columns": ["c1", "c2", "c9"]}, "'c9' not in the header"),
    ("path,c0,c1,c2", {}, "numbered from 1"),
    ("path,1,1.0,2", {}, "same score twice"),
    ("path,c1,votes1,c2", {}, "both name bucket 1"),
    ("path,a,b,c", {}, "no vote count columns"),
    ("name,c1,c2,c3", {}, "no image column"),
])
def test_csv_header_problems_are_errors_naming_the_columns(tmp_path, header, options, expected):
    csv_path = write_csv(tmp_path / "l.csv", header + "\nx.jpg,1,2,3\n")
    with pytest.raises(LabelError) as err:
        load_folder(csv_path, **options)
    assert expected in str(err.value) and str(csv_path) in str(err.value)


BAD_CSV_ROWS = {
    "too_few_fields": ("b.jpg,1,2", "row has 3 fields but the header has 4"),
    "too_many_fields": ("b.jpg,1,2,3,4", "row has 5 fields"),
    "non_integer_count": ("b.jpg,1,two,3", "'c2' is 'two'"),
    "fractional_count": ("b.jpg,1,2.5,3", "'c2' is '2.5'"),
    "negative_count": ("b.jpg,1,-2,3", "'c2' is -2"),
    "all_zero_counts": ("b.jpg,0,0,0", "all 3 vote counts are 0"),
    "empty_path": (",1,2,3", "cell is empty"),
    "duplicate_id": ("a.jpg,3,3,3", "already appeared on line 2"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CSV_ROWS))
def test_csv_bad_rows_strict_and_lenient(tmp_path, kind):
    bad, expected = BAD_CSV_ROWS[kind]
    csv_path = write_csv(tmp_path / "l.csv", f"path,c1,c2,c3\na.jpg,1,2,3\nc.jpg,1.0,0,0\n{bad}\n")
    with pytest.raises(LabelError) as err:
        load_folder(csv_path, strict=True)
    assert f"{csv_path} line 4" in str(err.value) and expected in str(err.value)
    ds = load_folder(csv_path, test_size=0, val_size=0)
    assert [r.votes for r in ds.records] == [(1, 2, 3), (1, 0, 0)]  # '1.0' is a whole number
    (problem,) = ds.problems
    assert problem.line == 4 and expected in problem.error
    assert problem.status == ("duplicate" if kind == "duplicate_id" else "bad_label")


def test_csv_bad_split_value_is_a_row_problem(tmp_path):
    csv_path = write_csv(tmp_path / "l.csv", "path,c1,c2,split\na.jpg,1,2,Validation\n"
                                             "b.jpg,1,2,holdout\n")
    ds = load_folder(csv_path)
    assert ds.records[0].split == "val"
    assert "'holdout' is not train, val or test" in ds.problems[0].error


def test_csv_without_split_column_uses_seeded_hash_sizes(tmp_path):
    rows = "".join(f"{k}.jpg,{k % 4},1\n" for k in range(40))
    csv_path = write_csv(tmp_path / "l.csv", "path,c1,c2\n" + rows)
    ds = load_folder(csv_path, test_size=8, val_size=0.25, seed=5)
    assert ds.report["splits"] == {"train": 24, "val": 8, "test": 8}
    again = load_folder(csv_path, test_size=8, val_size=3, seed=5)
    assert {r.image_id for r in again.split("test")} == {r.image_id for r in ds.split("test")}
    assert ds.split_spec["kind"] == "seeded-hash"


def test_csv_missing_images_reported_when_checked(tmp_path):
    csv_path = write_csv(tmp_path / "l.csv", "path,c1,c2,split\na.jpg,1,2,train\nb.jpg,1,2,test\n")
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8")
    ds = load_folder(csv_path, check_images=True)
    assert [r.image_id for r in ds.records] == ["a.jpg"]
    (problem,) = ds.problems
    assert (problem.image_id, problem.status, problem.split, problem.line) == \
        ("b.jpg", "missing", "test", 3)


def test_csv_empty_or_header_only_is_an_error(tmp_path):
    with pytest.raises(LabelError, match="empty"):
        load_folder(write_csv(tmp_path / "a.csv", ""))
    with pytest.raises(LabelError, match="no rows"):
        load_folder(write_csv(tmp_path / "b" / "b.csv", "path,c1,c2\n"))


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_delimiter_is_detected_from_the_header(tmp_path, delimiter):
    rows = ["path,c1,c2,c3,tags", "a.jpg,1,2,3,sky", "b.jpg,0,1,0,"]
    csv_path = write_csv(tmp_path / "l.csv", "".join(r.replace(",", delimiter) + "\n" for r in rows))
    ds = load_folder(csv_path, test_size=0, val_size=0)
    assert [r.votes for r in ds.records] == [(1, 2, 3), (0, 1, 0)]
    assert ds.report["delimiter"] == delimiter
    assert ("separated by" in ds.notes[0]) == (delimiter != ",")


@pytest.mark.parametrize("header, column, meant", [
    ("path,c1,c2,c3,c4,c5,c6,c7,c8,c9,c1O", "c1O", "c10"),
    ("path,votes_1,votes_2,votes_l3", "votes_l3", None),           # a letter before the digits: a name
    ("path,count_1,count_2,count_3,count_1O", "count_1O", "count_10"),
    ("path,1,2,3,4,5,6,7,8,9,1O", "1O", "10"),
])
def test_csv_misspelt_count_columns_are_refused(tmp_path, header, column, meant):
    n = header.count(",")
    csv_path = write_csv(tmp_path / "l.csv", header + "\nx.jpg" + ",1" * n + "\n")
    if meant is None:
        assert column in load_folder(csv_path, test_size=0, val_size=0).report["ignored_columns"]
        return
    with pytest.raises(LabelError) as err:
        load_folder(csv_path)
    assert f"{column!r}" in str(err.value) and f"{meant!r}" in str(err.value)
    assert err.value.param == "count_columns"


def test_csv_notes_name_the_score_columns_and_the_ignored_ones(tmp_path):
    csv_path = write_csv(tmp_path / "l.csv", "path,c1,c2,c3,comment,split\na.jpg,1,2,3,hi,train\n")
    ds = load_folder(csv_path)
    assert ds.score_columns == [{"column": "c1", "bucket": 1, "score": 1.0},
                                {"column": "c2", "bucket": 2, "score": 2.0},
                                {"column": "c3", "bucket": 3, "score": 3.0}]
    assert ds.notes[0] == ("l.csv: votes per score bucket from columns c1 -> 1, c2 -> 2, c3 -> 3 (3 buckets, "
                           "high/low threshold 2); image paths from column 'path'; ignored columns: comment")
    assert ds.report["ignored_columns"] == ["comment"]
    assert load_ava(write_ava(tmp_path / "ava", many_ava_lines(2)), val_size=0).score_columns is None


@pytest.mark.parametrize("n_val, warned", [(0, "empty"), (29, "only 29 image(s)"), (30, None)])
def test_a_validation_split_under_30_images_is_a_note(tmp_path, n_val, warned):
    rows = "".join(f"{k}.jpg,1,{k % 3}\n" for k in range(40))
    ds = load_folder(write_csv(tmp_path / "l.csv", "path,c1,c2\n" + rows), test_size=0, val_size=n_val)
    notes = [n for n in ds.notes if "validation split" in n]
    if warned is None:
        assert notes == []
    else:
        (note,) = notes
        assert warned in note and "--val-size" in note


def test_problems_say_their_location_once_and_the_image_path(tmp_path):
    csv_path = write_csv(tmp_path / "l.csv", "path,c1,c2\na.jpg,1,2\nsub/b.jpg,1,x\n,1,1\n")
    ds = load_folder(csv_path, test_size=0, val_size=0, image_root=tmp_path / "imgs")
    bad, empty = ds.problems
    assert bad.located() == f"{csv_path}:3: count column 'c2' is 'x', not a whole number; fix or delete this row"
    assert bad.reason.startswith("count column 'c2'") and bad.path == str(tmp_path / "imgs" / "sub" / "b.jpg")
    assert empty.path is None
    ids = load_folder(write_csv(tmp_path / "i.csv", "id,c1,c2\n7,1,2\n8,0,0\n"), test_size=0, val_size=0)
    assert ids.problems[0].path == str(tmp_path / "8.jpg")
    ava = load_ava(write_ava(tmp_path / "ava", [ava_line(1, 5, [0] * 10)] + many_ava_lines(1)), val_size=0)
    assert ava.problems[0].path == str(tmp_path / "ava" / "images" / "5.jpg")


def test_check_images_resolve_names_an_example_and_the_rule(tmp_path):
    csv_path = write_csv(tmp_path / "csv" / "l.csv", "path,c1,c2\nphotos/a.jpg,1,2\n")
    ds = load_folder(csv_path, test_size=0, val_size=0)
    with pytest.raises(LabelError) as err:
        check_images_resolve(ds)
    message = str(err.value)
    assert str(tmp_path / "csv" / "photos" / "a.jpg") in message and "the CSV's folder" in message
    assert "image_root" in message and err.value.param == "image_root"
    (tmp_path / "csv" / "photos").mkdir()
    (tmp_path / "csv" / "photos" / "a.jpg").write_bytes(b"x")
    check_images_resolve(ds)                                   # one file is enough
    ava = load_ava(write_ava(tmp_path / "ava", many_ava_lines(2)), val_size=0)
    with pytest.raises(LabelError, match=r"images/\{id\}\.jpg"):
        check_images_resolve(ava)


# --------------------------------------------------------------------------- entry

def test_open_dataset_dispatches_and_lists_kinds(tmp_path):
    write_ava(tmp_path / "ava", many_ava_lines(2))
    assert open_dataset("ava", tmp_path / "ava", val_size=0).name == "ava"
    write_csv(tmp_path / "own" / "labels.csv", "path,c1,c2\na.jpg,1,2\n")
    ds = open_dataset("folder", tmp_path / "own", test_size=0, val_size=0)  # folder with one CSV
    assert ds.name == "folder" and len(ds.records) == 1
    with pytest.raises(ValueError) as err:
        open_dataset("tid2013", tmp_path)
    assert all(k in str(err.value) for k in ("ava", "photonet", "folder"))


def test_records_and_problems_are_frozen(tmp_path):
    ds = load_ava(write_ava(tmp_path, many_ava_lines(1)), val_size=0)
    assert isinstance(ds.records[0], Record)
    with pytest.raises(AttributeError):
        ds.records[0].split = "test"
    with pytest.raises(AttributeError):
        Problem("1", "f", 1, "missing", "e").status = "x"
