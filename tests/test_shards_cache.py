"""`gpf.shards.cache.ShardCache`: verified tars by sha256, bounded by size, least recently used first out.
(Its use by the reader, filled from an S3 server and read back, is in tests/test_s3_end_to_end.py.)"""
from __future__ import annotations

import os

from gpf.shards.cache import ShardCache

def test_cache_keeps_verified_files_within_its_bound(tmp_path):
    cache = ShardCache(tmp_path / "cache", max_bytes=250)
    for i, sha in enumerate(("a" * 64, "b" * 64, "c" * 64)):
        writer = cache.writer(sha)
        writer.write(bytes([i]) * 100)
        writer.commit()
        os.utime(cache.path(sha), ns=(i * 10**9, i * 10**9))   # a distinct "last used" time each
    assert cache.get("a" * 64, 100) is None                    # the least recently used went first
    assert cache.get("c" * 64, 100) == cache.path("c" * 64)
    assert cache.get("c" * 64, 99) is None                     # size must match the stats
    aborted = cache.writer("d" * 64)
    aborted.write(b"x")
    aborted.abort()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{'b' * 64}.tar", f"{'c' * 64}.tar"]


def test_cache_remembers_etags(tmp_path):
    cache = ShardCache(tmp_path)
    cache.remember_etag("s3://b/x.tar", "e1", "f" * 64)
    assert ShardCache(tmp_path).etags() == {"s3://b/x.tar": {"etag": "e1", "sha256": "f" * 64}}


def test_reader_fills_the_cache_from_s3_and_refuses_an_altered_cached_copy(s3_server, tmp_path):
    """The first read streams and keeps a verified copy; the next reads it; a cached copy whose bytes
    changed is refused by its hash (naming it) and removed."""
    import io

    import numpy as np
    import pytest
    from PIL import Image

    from gpf.shards.layout import ShardReadError
    from gpf.shards.manifest import RunFields, write_manifest
    from gpf.shards.reader import iter_shard, list_shards
    from gpf.shards.storage import Location
    from gpf.shards.writer import write_shard

    def jpeg(value):
        out = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(out, "JPEG")
        return out.getvalue()
    samples = [{"key": f"k{i}", "periph.jpg": jpeg(i), "fovea.jpg": jpeg(i), "attn.npy": np.zeros((2, 2)),
                "json": {"id": f"k{i}", "votes": [1, i]}} for i in range(3)]
    url = Location(s3_server.make_bucket() + "/shards", s3_server.storage_options)
    write_shard(url, "val", 0, samples, [{"id": s["key"], "status": "ok"} for s in samples])
    write_manifest(url, RunFields())
    (spec,) = list_shards(url, "val")
    cache = ShardCache(tmp_path / "cache")
    keys = [s["__key__"] for s in iter_shard(spec, lambda key, member: True, cache)]
    assert keys == ["k0", "k1", "k2"] and cache.get(spec.sha256, spec.bytes) is not None
    assert [s["__key__"] for s in iter_shard(spec, lambda key, member: True, cache)] == keys
    cached = cache.path(spec.sha256)
    data = bytearray(cached.read_bytes())
    data[data.index(b"\xff\xd8") + 20] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(ShardReadError, match=f"{cached}: the sha256 of the bytes read differs"):
        list(iter_shard(spec, lambda key, member: True, cache))
    assert not cached.exists()
