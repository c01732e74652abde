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
