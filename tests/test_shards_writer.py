"""Shard writer and manifest: checked against tarfile, hashlib, pandas and PIL (independent
readers), never against the shard reader. Names, keys, assignment and JPEG headers
(gpf.shards.layout): tests/test_shards_layout.py."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest

from helpers.shards import random_jpeg
from gpf.shards.layout import PARQUET_COLUMNS, rand_member, safe_key
from gpf.shards.manifest import (MANIFEST_FORMAT, Manifest, ManifestError, RunFields, ShardEntry, compare_config,
                                 read_manifest, run_fields, with_run, write_manifest)
from gpf.shards.writer import ShardWriter, is_shard_done, read_stats, write_shard


# ---------------------------------------------------------------- fixtures
def make_sample(image_id, rng, periph_hw=(24, 32), fovea=16, votes=None, rand=0, features=False):
    votes = list(votes if votes is not None else rng.integers(0, 9, 10).tolist())
    key = safe_key(image_id)
    sample = {"key": key,
              "periph.jpg": random_jpeg(rng, periph_hw[1], periph_hw[0]),
              "fovea.jpg": random_jpeg(rng, fovea, fovea),
              "attn.npy": rng.random((periph_hw[0] // 8, periph_hw[1] // 8)).astype(np.float16),
              "json": {"id": image_id, "votes": votes, "box": [1, 2, 30, 20], "tags": ["a"],
                       "category": None, "path": f"images/{image_id}.jpg"}}
    for k in range(rand):
        sample[rand_member(k)] = random_jpeg(rng, fovea, fovea)
    if features:
        sample["pfeat.npy"] = rng.standard_normal(8).astype(np.float16)
    row = {"id": image_id, "path": f"images/{image_id}.jpg", "width": 320, "height": 240,
           "votes": votes, "mean": 5.0, "std": 1.0, "tags": ["a"], "category": None,
           "challenge": 7, "x0": 1, "y0": 2, "x1": 30, "y1": 20, "attn_fraction": 0.71,
           "status": "ok", "error": None}
    return sample, row


def failure_row(image_id):
    return {"id": image_id, "path": f"images/{image_id}.jpg", "status": "missing",
            "error": f"images/{image_id}.jpg: file not found; restore it or drop the id"}


def samples_and_rows(n, seed=0, **kw):
    rng = np.random.default_rng(seed)
    pairs = [make_sample(str(1000 + i), rng, **kw) for i in range(n)]
    return [s for s, _ in pairs], [r for _, r in pairs]


# ---------------------------------------------------------------- writer
def test_write_then_read_back_with_tarfile_and_pandas(tmp_path):
    samples, rows = samples_and_rows(4, rand=2, features=True)
    rows.append(failure_row("broken.jpg"))
    stats = write_shard(tmp_path, "train", 3, samples, rows)

    tar_path = tmp_path / "train-000003.tar"
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        infos = tar.getmembers()
    order = ["json", "periph.jpg", "fovea.jpg", "attn.npy", "rand0.jpg", "rand1.jpg", "pfeat.npy"]
    assert names == [f"{s['key']}.{m}" for s in samples for m in order]
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.mode == 0o444 and i.uname == ""
               for i in infos)
    for s in samples:
        k = s["key"]
        for m in ("periph.jpg", "fovea.jpg", "rand0.jpg", "rand1.jpg"):
            assert members[f"{k}.{m}"] == s[m]          # stored as given, never re-encoded
        attn = np.load(io.BytesIO(members[f"{k}.attn.npy"]), allow_pickle=False)
        assert attn.dtype == np.float16 and np.array_equal(attn, s["attn.npy"])
        feats = np.load(io.BytesIO(members[f"{k}.pfeat.npy"]), allow_pickle=False)
        assert np.array_equal(feats, s["pfeat.npy"])
        assert json.loads(members[f"{k}.json"]) == s["json"]

    table = pd.read_parquet(tmp_path / "meta")
    assert list(table.columns) == list(PARQUET_COLUMNS)
    assert len(table) == 5
    assert table["shard"].unique().tolist() == ["train-000003"]
    assert table["split"].unique().tolist() == ["train"]
    ok = table[table.status == "ok"]
    assert ok["key"].tolist() == [s["key"] for s in samples]
    assert ok["n_votes"].tolist() == [sum(s["json"]["votes"]) for s in samples]
    assert ok["error"].isna().all()
    failed = table[table.status != "ok"].iloc[0]
    assert failed["id"] == "broken.jpg" and failed["key"] == safe_key("broken.jpg")
    assert pd.isna(failed["width"]) and "not found" in failed["error"]

    data = tar_path.read_bytes()
    assert stats["count"] == 4 and stats["rows"] == 5
    assert stats["bytes"] == len(data) and stats["sha256"] == hashlib.sha256(data).hexdigest()
    parquet = (tmp_path / "meta" / "train-000003.parquet").read_bytes()
    assert stats["parquet_sha256"] == hashlib.sha256(parquet).hexdigest()
    assert stats["status_counts"] == {"missing": 1, "ok": 4}
    assert stats["periph_shapes"] == [[24, 32, 4]]
    assert stats["random_crops"] == 2 and stats["features"] is True
    assert read_stats(tmp_path, "train", 3) == stats
    assert not list(tmp_path.rglob(".*.tmp"))


def test_identical_input_gives_byte_identical_files(tmp_path):
    outputs = []
    for name in ("a", "b"):
        samples, rows = samples_and_rows(5, seed=7, rand=1)
        write_shard(tmp_path / name, "val", 0, samples, rows)
        outputs.append([(tmp_path / name / f).read_bytes() for f in
                        ("val-000000.tar", "meta/val-000000.parquet", "val-000000.stats.json")])
    assert outputs[0] == outputs[1]
    # and the check can fail: one different vote changes the tar
    samples, rows = samples_and_rows(5, seed=7, rand=1)
    samples[2]["json"]["votes"][0] += 1
    rows[2]["votes"] = samples[2]["json"]["votes"]
    write_shard(tmp_path / "c", "val", 0, samples, rows)
    assert (tmp_path / "c" / "val-000000.tar").read_bytes() != outputs[0][0]


def test_unsafe_id_keeps_original_in_json_and_parquet(tmp_path):
    rng = np.random.default_rng(1)
    image_id = "photos/my cat.v2.jpg"
    sample, row = make_sample(image_id, rng)
    write_shard(tmp_path, "train", 0, [sample], [row])
    key = safe_key(image_id)
    assert key.startswith("_") and "." not in key
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        meta = json.loads(tar.extractfile(f"{key}.json").read())
    assert meta["id"] == image_id
    table = pd.read_parquet(tmp_path / "meta")
    assert table.loc[0, "id"] == image_id and table.loc[0, "key"] == key


def test_done_marker_semantics(tmp_path):
    samples, rows = samples_and_rows(2)
    assert not is_shard_done(tmp_path, "train", 0)
    writer = ShardWriter(tmp_path, "train", 0)
    for s in samples:
        writer.write(s)
    for r in rows:
        writer.add_row(r)
    assert not is_shard_done(tmp_path, "train", 0)        # tar still a temp file
    writer.close()
    assert is_shard_done(tmp_path, "train", 0)
    (tmp_path / "train-000000.stats.json").unlink()
    assert not is_shard_done(tmp_path, "train", 0)        # no stats file = not done
    write_shard(tmp_path, "train", 0, samples, rows)
    tar = tmp_path / "train-000000.tar"
    tar.write_bytes(tar.read_bytes()[:-512])
    assert not is_shard_done(tmp_path, "train", 0)        # size disagrees with stats


def test_rerun_overwrites_leftovers_of_a_killed_run(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / ".train-000001.tar.tmp").write_bytes(b"half a tar")
    (tmp_path / "meta" / ".train-000001.parquet.tmp").write_bytes(b"junk")
    (tmp_path / "train-000001.tar").write_bytes(b"old tar without stats")
    samples, rows = samples_and_rows(3)
    stats = write_shard(tmp_path, "train", 1, samples, rows)
    assert is_shard_done(tmp_path, "train", 1)
    assert (tmp_path / "train-000001.tar").stat().st_size == stats["bytes"]
    assert not list(tmp_path.rglob(".*.tmp"))
    assert len(pd.read_parquet(tmp_path / "meta")) == 3   # the junk temp is not read


def test_exception_inside_with_leaves_shard_not_done(tmp_path):
    samples, rows = samples_and_rows(2)
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, "train", 0) as writer:
            writer.write(samples[0])
            raise RuntimeError("boom")
    assert not is_shard_done(tmp_path, "train", 0)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_rewriting_a_done_shard_clears_done_first(tmp_path):
    samples, rows = samples_and_rows(2)
    write_shard(tmp_path, "train", 0, samples, rows)
    writer = ShardWriter(tmp_path, "train", 0)
    assert not is_shard_done(tmp_path, "train", 0)
    writer.abort()


@pytest.mark.parametrize("change, message", [
    (lambda s, r: r.pop(), "without an 'ok' row.*1001"),
    (lambda s, r: s.pop(), "without a sample.*1001"),
    (lambda s, r: r.append(dict(r[0])), "more than one 'ok' row.*1000"),
])
def test_rows_must_match_samples(tmp_path, change, message):
    samples, rows = samples_and_rows(2)
    change(samples, rows)
    with pytest.raises(ValueError, match=message):
        write_shard(tmp_path, "train", 0, samples, rows)
    assert not is_shard_done(tmp_path, "train", 0)


def test_bad_samples_and_rows_are_named(tmp_path):
    rng = np.random.default_rng(0)
    sample, row = make_sample("42", rng)
    cases = [
        ({**sample, "extra.txt": b"x"}, "unknown member"),
        ({k: v for k, v in sample.items() if k != "fovea.jpg"}, "missing member"),
        ({**sample, "key": "43"}, "does not match json id"),
        ({**sample, "fovea.jpg": b"not a jpeg"}, "fovea.jpg: not a JPEG"),
        ({**sample, "json": {**sample["json"], "mean": float("nan")}}, "NaN"),
        ({**sample, "attn.npy": np.full((3, 4), np.nan, np.float32)}, "NaN"),
        ({**sample, "attn.npy": np.zeros(3, np.float16)}, "2 dimension"),
    ]
    with ShardWriter(tmp_path, "train", 0) as writer:
        for bad, message in cases:
            with pytest.raises((ValueError, TypeError), match=message):
                writer.write(bad)
        with pytest.raises(ValueError, match="unknown column.*colour"):
            writer.add_row({**row, "colour": "red"})
        with pytest.raises(ValueError, match="need an 'error'"):
            writer.add_row({"id": "9", "status": "missing"})
        with pytest.raises(ValueError, match="error None"):
            writer.add_row({**row, "error": "oops"})
        writer.write(sample)
        writer.add_row(row)
        with pytest.raises(ValueError, match="written twice"):
            writer.write(sample)
    assert is_shard_done(tmp_path, "train", 0)


def test_bad_parquet_value_names_row_and_column(tmp_path):
    samples, rows = samples_and_rows(2)
    rows[1]["width"] = "wide"
    with pytest.raises(ValueError, match="row id '1001': column width"):
        write_shard(tmp_path, "train", 0, samples, rows)


def test_float32_attention_is_stored_as_float16(tmp_path):
    samples, rows = samples_and_rows(1)
    samples[0]["attn.npy"] = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    write_shard(tmp_path, "train", 0, samples, rows)
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        attn = np.load(io.BytesIO(tar.extractfile(f"{samples[0]['key']}.attn.npy").read()))
    assert attn.dtype == np.float16
    np.testing.assert_allclose(attn, samples[0]["attn.npy"], atol=1e-3)


# ---------------------------------------------------------------- manifest
RUN = RunFields(dataset="ava", scores=tuple(range(1, 11)), threshold=5.0, view_size=224, tau=0.7,
                eb_layer="features.29", stage1_digest="ab" * 32)


def test_manifest_lists_shards_from_stats(tmp_path):
    s0 = write_shard(tmp_path, "train", 0, *samples_and_rows(3, seed=1, rand=2))
    s1 = write_shard(tmp_path, "train", 1, *samples_and_rows(2, seed=2, rand=1))
    samples, rows = samples_and_rows(1, seed=3)
    s2 = write_shard(tmp_path, "val", 0, samples, rows + [failure_row("gone")])
    run = dataclasses.replace(RUN, config={"tau": 0.7}, environment={"torch": "x"})
    manifest = write_manifest(tmp_path, run)
    assert manifest.run == run
    assert isinstance(manifest, Manifest) and read_manifest(tmp_path) == manifest
    assert all(isinstance(e, ShardEntry) for e in manifest.shards)
    assert [(e.name, e.count, e.sha256) for e in manifest.shards] == [
        ("train-000000", 3, s0["sha256"]), ("train-000001", 2, s1["sha256"]),
        ("val-000000", 1, s2["sha256"])]
    assert manifest.splits["train"]["samples"] == 5 and manifest.samples("train") == 5
    assert manifest.splits["val"]["status_counts"] == {"missing": 1, "ok": 1}
    assert [e.name for e in manifest.entries("train")] == ["train-000000", "train-000001"]
    assert manifest.splits_with_samples() == ["train", "val"]
    assert manifest.random_crops == 0          # the val shard has none
    assert manifest.features is False
    assert manifest.run.scores == tuple(float(s) for s in range(1, 11))
    assert manifest.run.stage1_digest == "ab" * 32 and manifest.complete is True
    assert manifest.run.config == {"tau": 0.7} and manifest.run.environment == {"torch": "x"}
    # on disk: the same flat keys as format 1, plus the run fields format 2 added
    stored = json.loads((tmp_path / "manifest.json").read_text())
    assert stored["format"] == MANIFEST_FORMAT and stored["scores"] == [float(s) for s in range(1, 11)]
    assert stored["tau"] == 0.7 and stored["random_crops"] == 0 and stored["splits"]["train"]["samples"] == 5
    assert {"contrastive", "attention_model", "features_digest", "split_spec"} <= set(stored)


def test_read_manifest_errors_say_what_to_do(tmp_path):
    with pytest.raises(ManifestError, match="is not a shard folder: it holds no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "train-000000.tar").write_bytes(b"")      # a shard folder whose run has not finished
    with pytest.raises(ManifestError, match="missing.*--write-manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": 1}')
    with pytest.raises(ManifestError, match="no 'shards'"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no such shard folder"):
        read_manifest(tmp_path / "nope")


def test_compare_config_names_each_differing_key():
    old = {"tau": 0.7, "view": {"size": 224, "stride": 32}, "layers": [1, 2], "same": "x"}
    new = {"tau": 0.5, "view": {"size": 224, "stride": 16}, "layers": (1, 2), "same": "x",
           "extra": True}
    diff = compare_config(old, new)
    assert diff == ["extra: missing -> True", "tau: 0.7 -> 0.5", "view.stride: 32 -> 16"]
    assert compare_config(old, dict(old)) == []


def test_compare_config_of_manifests_for_resume(tmp_path):
    write_shard(tmp_path, "train", 0, *samples_and_rows(1))
    a = write_manifest(tmp_path, dataclasses.replace(RUN, config={"q": 95}, environment={"torch": "2.4"}),
                       complete=False)
    assert read_manifest(tmp_path).complete is False
    b = with_run(a, environment={"torch": "2.5"}, tau=0.6)
    assert compare_config(run_fields(a), run_fields(b)) == [
        "environment.torch: '2.4' -> '2.5'", "tau: 0.7 -> 0.6"]
