"""Our shards are plain WebDataset tars: the webdataset library reads them as they are."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

wds = pytest.importorskip("webdataset")

from gpf.shards.writer import write_shard  # noqa: E402


def _jpeg(rng, size) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_webdataset_reads_every_member_of_our_shards(tmp_path):
    rng = np.random.default_rng(0)
    samples, rows = [], []
    for i in range(5):
        key = f"img{i}"
        samples.append({"key": key, "periph.jpg": _jpeg(rng, (32, 24)), "fovea.jpg": _jpeg(rng, (32, 32)),
                        "attn.npy": rng.random((3, 4)).astype(np.float16),
                        "json": {"id": key, "votes": [1, 2, 3], "box": [0, 0, 10, 10]}})
        rows.append({"id": key, "split": "train", "key": key, "status": "ok"})
    write_shard(tmp_path, "train", 0, samples, rows)

    dataset = wds.WebDataset(str(tmp_path / "train-000000.tar"), shardshuffle=False).decode("rgb8")
    seen = list(dataset)
    assert [s["__key__"] for s in seen] == [s["key"] for s in samples]
    for got, want in zip(seen, samples):
        assert got["periph.jpg"].shape == (24, 32, 3) and got["fovea.jpg"].shape == (32, 32, 3)
        np.testing.assert_array_equal(got["attn.npy"], want["attn.npy"])
        assert json.loads(got["json"]) == want["json"] if isinstance(got["json"], (bytes, str)) \
            else got["json"] == want["json"]


# ----------------------------------------------------------------------------- gpf.shards.webdataset_pipeline

def _gpf_samples(shard_dir, split: str) -> dict:
    """key -> (json, periph, fovea, attn) as gpf's own reader yields them (one sample per batch)."""
    from gpf.shards.reader import make_loader

    out = {}
    for batch in make_loader(shard_dir, split, 1, shuffle=False, num_workers=0, members=("periph", "fovea", "attn")):
        out[batch["key"][0]] = (batch["id"][0], batch["votes"][0].tolist(), batch["periph"][0], batch["fovea"][0],
                                batch["attn"][0].numpy())
    return out


def _check_same_samples(pipeline, reference: dict) -> None:
    seen = {}
    for sample in pipeline:
        seen[sample["__key__"]] = sample
        assert not any(isinstance(v, bytes) for k, v in sample.items() if not k.startswith("__"))
    assert sorted(seen) == sorted(reference)
    for key, (image_id, votes, periph, fovea, attn) in reference.items():
        sample = seen[key]
        assert sample["json"]["id"] == image_id and [float(v) for v in sample["json"]["votes"]] == votes
        assert sample["periph.jpg"].dtype == periph.dtype and bool((sample["periph.jpg"] == periph).all())
        assert bool((sample["fovea.jpg"] == fovea).all())
        np.testing.assert_array_equal(sample["attn.npy"].astype(np.float32), attn)


def test_webdataset_pipeline_yields_the_samples_of_gpfs_reader(tmp_path):
    from gpf.shards import webdataset_pipeline
    from gpf.shards.manifest import RunFields, write_manifest

    rng = np.random.default_rng(2)
    for index in range(2):
        samples, rows = [], []
        for i in range(3):
            key = f"s{index}_{i}"
            samples.append({"key": key, "periph.jpg": _jpeg(rng, (32, 24)), "fovea.jpg": _jpeg(rng, (16, 16)),
                            "attn.npy": rng.random((3, 4)).astype(np.float16),
                            "json": {"id": key, "votes": [1, 2, i]}})
            rows.append({"id": key, "status": "ok", "votes": [1, 2, i]})
        write_shard(tmp_path, "val", index, samples, rows)
    write_manifest(tmp_path, RunFields(scores=(1.0, 2.0, 3.0), threshold=2.0, view_size=32))
    _check_same_samples(webdataset_pipeline(tmp_path, "val"), _gpf_samples(tmp_path, "val"))


def test_webdataset_pipeline_reads_shards_from_s3(s3_server, tmp_path):
    """The same samples from the test server: webdataset opens s3:// through gpf's fsspec opener."""
    import sys

    from gpf.shards import webdataset_pipeline
    from gpf.shards.manifest import RunFields, write_manifest
    from gpf.shards.storage import Location

    rng = np.random.default_rng(3)
    samples = [{"key": f"k{i}", "periph.jpg": _jpeg(rng, (24, 32)), "fovea.jpg": _jpeg(rng, (16, 16)),
                "attn.npy": rng.random((2, 2)).astype(np.float16), "json": {"id": f"k{i}", "votes": [i, 1]}}
               for i in range(4)]
    rows = [{"id": s["key"], "status": "ok"} for s in samples]
    url = Location(s3_server.make_bucket() + "/shards", s3_server.storage_options)
    write_shard(url, "test", 0, samples, rows)
    write_manifest(url, RunFields(scores=(1.0, 2.0), threshold=1.5, view_size=32))
    pipeline = webdataset_pipeline(url, "test")
    assert "s3" in sys.modules["webdataset.gopen"].gopen_schemes
    _check_same_samples(pipeline, _gpf_samples(url, "test"))
